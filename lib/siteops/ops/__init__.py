"""Operations: what the commands do, as functions with typed parameters that
commands and other operations call directly (a command parses its argv, calls
one operation and prints; no operation builds argv for another)."""
