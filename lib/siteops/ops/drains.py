"""Adding and removing a site's log drains (logs NAME drain): the registry
and rsyslog's files change together, under the registry's lock."""

from __future__ import annotations

from .. import drains, registry
from ..errors import UsageError
from ..host import Host
from ..journal import now
from ..model import Drain, Site


def add(host: Host, name: str, url: str, ca: str | None = None, plain: bool = False) -> Site:
    """Ship site name's logs to url too (ca: the PEM its collector's
    certificate must chain to; else the system's CAs). Adding one it has
    already converges rsyslog's files on it. Returns the entry."""
    drains.parse_url(url, plain)
    if ca is not None:
        drains.check_ca(host, ca)
    with registry.locked(host, f"logs {name} drain add") as data:
        site = registry.get_site(data, name)
        kept = [d for d in site.drains if d.url != url]
        same = next((d for d in site.drains if d.url == url), None)
        if same is not None and same.ca != ca:
            raise UsageError(f"site {name} already ships to {url} with another CA: remove it "
                             "first")
        entry = site.copy(drains=[*kept, same or Drain(url, ca, now())])
        drains.ensure(host, [entry if s.name == name else s for s in data.sites.values()])
        if entry != site:
            host.registry_change()
            data.sites[name] = entry
            registry.save(host, data)
    return entry


def remove(host: Host, name: str, url: str) -> Site:
    """Stop shipping site name's logs to url (what its queue still holds is
    dropped). Returns the entry."""
    with registry.locked(host, f"logs {name} drain remove") as data:
        site = registry.get_site(data, name)
        if all(d.url != url for d in site.drains):
            raise UsageError(f"site {name} has no drain {url}" + (
                f" (it has: {', '.join(d.url for d in site.drains)})" if site.drains else ""))
        entry = site.copy(drains=[d for d in site.drains if d.url != url])
        drains.ensure(host, [entry if s.name == name else s for s in data.sites.values()])
        host.registry_change()
        data.sites[name] = entry
        registry.save(host, data)
    return entry
