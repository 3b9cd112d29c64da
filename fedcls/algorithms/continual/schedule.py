"""Which experience each site trains on in each round, and when sites take part.

Experience e of the federation spans rounds e*R+1 .. (e+1)*R (R = rounds_per_experience).
``schedule=staggered`` delays site s by lag(s) rounds, spread evenly from 0 (site 0) to
``stagger`` (the last site), so sites reach a new experience at different rounds. The last
``late_sites`` sites take no part before ``join_round``; a late site starts at whatever
experience its schedule has reached (it never sees the earlier ones).
"""

from __future__ import annotations

from fedcls.schema import Config, ContinualConfig


def _c(cfg: Config) -> ContinualConfig:
    return cfg.continual


def lag(cfg: Config, site: int) -> int:
    """Rounds by which site `site` trails the federation's schedule."""
    c, n = _c(cfg), cfg.num_clients
    if c.schedule != "staggered" or n == 1:
        return 0
    return int(round(site * c.stagger / (n - 1)))


def max_lag(cfg: Config) -> int:
    return max(lag(cfg, s) for s in range(cfg.num_clients))


def site_experience(cfg: Config, site: int, rnd: int) -> int:
    """The experience site `site` trains on in round `rnd` (1-based)."""
    c = _c(cfg)
    return min(c.experiences - 1, max(0, (rnd - 1 - lag(cfg, site)) // c.rounds_per_experience))


def federation_experience(cfg: Config, rnd: int) -> int:
    """The experience of the federation's own (unlagged) clock in round `rnd`."""
    c = _c(cfg)
    return min(c.experiences - 1, (rnd - 1) // c.rounds_per_experience)


def late_sites(cfg: Config) -> set[int]:
    n = cfg.num_clients
    return set(range(n - _c(cfg).late_sites, n))


def active_sites(cfg: Config, rnd: int) -> set[int]:
    """Sites that take part in round `rnd` (late sites only from join_round on)."""
    late = late_sites(cfg) if rnd < _c(cfg).join_round else set()
    return set(range(cfg.num_clients)) - late


def experience_end_rounds(cfg: Config) -> list[int]:
    """For each experience, the round after which every site has finished it (the last
    experience ends with the run): where the accuracy matrix takes its rows."""
    c = _c(cfg)
    ends = [(e + 1) * c.rounds_per_experience + max_lag(cfg) for e in range(c.experiences - 1)]
    return [min(r, cfg.rounds) for r in ends] + [cfg.rounds]


def rounds_needed(cfg: Config) -> int:
    """Rounds for every site to train R rounds on each experience."""
    c = _c(cfg)
    return c.experiences * c.rounds_per_experience + max_lag(cfg)
