"""Example raw datasets: files as a user would have them, plus the import spec that describes them.

`longtail data example NAME --out DIR` writes one of them, to try `longtail data import` on or
to copy the spec of:

* ``ratings``: a generated ratings dataset in three CSV files (users whose profile changes over
  time, a static item catalog, ratings with Unix-second times), the scenario being the rated
  item's genre (a long tail of genres), the label "liked" (a rating of 4 or 5). What a user likes
  depends on the user's and the item's hidden tendencies, visible through their earlier ratings,
  and on the user's age and plan with a per-genre weight;
* ``flights``: the real 2013 NYC flights as parquet files (`longtail.data.flights.export_raw`).
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd

from longtail.io import atomic_path, atomic_write_text

RATINGS_SPEC = "ratings.import.yaml"
GENRES = ("drama", "comedy", "action", "thriller", "romance", "documentary", "horror", "animation", "scifi",
          "western", "musical", "noir")
T0 = pd.Timestamp("2024-01-01", tz="UTC")


@dataclass(frozen=True)
class RatingsConfig:
    """Args:
    users: number of users.
    items: number of items.
    ratings_per_user: mean number of ratings of a user (Poisson).
    days: the rating period.
    genre_decay: each genre is this many times as popular as the previous one (a long tail).
    seed: random seed (same seed, same files).
    """

    users: int = 800
    items: int = 400
    ratings_per_user: float = 30.0
    days: int = 180
    genre_decay: float = 0.6
    seed: int = 0


def ratings_frames(cfg: RatingsConfig | None = None) -> dict[str, pd.DataFrame]:
    """The three raw tables of the ratings example.

    Returns:
        ``{"users.csv": ..., "items.csv": ..., "ratings.csv": ...}``.
    """
    cfg = cfg or RatingsConfig()
    rng = np.random.default_rng(cfg.seed)
    # items: a static catalog, genres in a long tail
    p = cfg.genre_decay ** np.arange(len(GENRES))
    genre = rng.choice(len(GENRES), cfg.items, p=p / p.sum())
    quality = rng.normal(0, 0.9, cfg.items)
    items = pd.DataFrame({"item_id": np.arange(1, cfg.items + 1), "genre": np.array(GENRES)[genre],
                          "year": rng.integers(1975, 2024, cfg.items),
                          "price": np.round(np.exp(rng.normal(2.0, 0.6, cfg.items)), 2)})
    # users: signed up before the period; some change plan during it (a second profile row)
    bias = rng.normal(0, 0.9, cfg.users)
    age = rng.integers(16, 80, cfg.users).astype(float)
    age[rng.uniform(size=cfg.users) < 0.1] = np.nan
    plan0 = rng.choice(["free", "premium"], cfg.users, p=[0.7, 0.3])
    signup = T0 - pd.to_timedelta(rng.uniform(1, 400, cfg.users), unit="D")
    change = rng.uniform(size=cfg.users) < 0.4
    change_at = T0 + pd.to_timedelta(rng.uniform(0, cfg.days, cfg.users), unit="D")
    ids = np.arange(1, cfg.users + 1)
    users = pd.concat([
        pd.DataFrame({"user_id": ids, "updated_at": signup, "age": age, "plan": plan0}),
        pd.DataFrame({"user_id": ids[change], "updated_at": change_at[change], "age": age[change],
                      "plan": np.where(plan0[change] == "free", "premium", "free")}),
    ]).sort_values(["user_id", "updated_at"]).reset_index(drop=True)
    users["updated_at"] = users["updated_at"].dt.floor("s").dt.strftime("%Y-%m-%dT%H:%M:%S+00:00")
    # ratings: users pick items by popularity; the rating follows hidden tendencies and a per-genre taste
    n = rng.poisson(cfg.ratings_per_user, cfg.users) + 1
    user = np.repeat(np.arange(cfg.users), n)
    pop = np.exp(rng.normal(0, 1.0, cfg.items))
    item = rng.choice(cfg.items, len(user), p=pop / pop.sum())
    seconds = rng.integers(0, cfg.days * 86400, len(user))
    at = T0 + pd.to_timedelta(seconds, unit="s")
    plan = np.where(change[user] & (at >= change_at[user]), np.where(plan0[user] == "free", "premium", "free"),
                    plan0[user])
    w_age = rng.normal(0, 0.8, len(GENRES))
    w_plan = rng.normal(0, 0.8, len(GENRES))
    g = genre[item]
    age_z = np.nan_to_num((age[user] - 45) / 18)
    score = (3.3 + bias[user] + quality[item] + w_age[g] * age_z + w_plan[g] * (plan == "premium")
             + rng.normal(0, 0.9, len(user)))
    ratings = pd.DataFrame({"user_id": ids[user], "item_id": item + 1, "rated_at": (at.asi8 // 10**9),
                            "rating": np.clip(np.round(score), 1, 5).astype(int)})
    ratings = ratings.sort_values(["rated_at", "user_id"], kind="stable").reset_index(drop=True)
    return {"users.csv": users, "items.csv": items, "ratings.csv": ratings}


def write_ratings(out: str | Path, cfg: RatingsConfig | None = None) -> Path:
    """Write the ratings example (three CSV files and ``ratings.import.yaml``) to a folder.

    Returns:
        The path of the import spec.
    """
    out = Path(out)
    for name, df in ratings_frames(cfg).items():
        with atomic_path(out / name) as tmp:
            df.to_csv(tmp, index=False)
    text = resources.files("longtail").joinpath(f"specs/{RATINGS_SPEC}").read_text()
    return atomic_write_text(out / RATINGS_SPEC, text)


def write_example(name: str, out: str | Path, *, months: tuple[int, ...] | None = None) -> Path:
    """Write an example's raw files and import spec (``ratings`` or ``flights``).

    Args:
        name: the example.
        out: the folder.
        months: flights only: the months whose flights become events.

    Returns:
        The path of the import spec.
    """
    if name == "ratings":
        return write_ratings(out)
    if name == "flights":
        from longtail.data.flights import export_raw

        return export_raw(out, months=months)
    raise ValueError(f"example {name!r}: use one of ratings, flights")


__all__ = ["GENRES", "RatingsConfig", "ratings_frames", "write_example", "write_ratings"]
