"""The category prior of ``category=auto``: the query's neighbours vote for its category.

The query's nearest catalog items (:data:`AUTO_NEIGHBOURS`) vote for its category, a
score-weighted vote (:func:`category_votes`), and each product is ranked by its cosine plus
``category_prior`` (``vsearch.config.CATEGORY_PRIOR``, 0.02) times its category's share of the
vote (:func:`prior_score`). A confident vote lifts its category's near-ties above other
categories' products (class MAP@R 0.861 -> 0.877 on the validation split) while a clearly
closer product of another category keeps its place (customer-photo R@1 unchanged; a larger
weight buys more MAP@R with harder photos' R@10: ``experiments/results/served.md``). The vote
runs over the catalog's own categories, so it also works for a shop whose categories the
classifier never saw. :class:`vsearch.catalog.search.Searcher` ranks with it, exactly over the
whole catalog (each voted category searched on its own where needed: :func:`in_category`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from vsearch.stores.filters import Condition, Filter

AUTO_NEIGHBOURS = 10  # neighbours that vote for the query's category
VOTE_TEMPERATURE = 0.05  # softmax temperature over cosine scores for the vote


def category_votes(matches: Sequence[dict], temperature: float = VOTE_TEMPERATURE) -> dict[str, float]:
    """Score-weighted vote of the neighbours' categories: category -> share of the vote (sums to 1)."""
    if not matches:
        return {}
    scores = np.array([m["score"] for m in matches], np.float64)
    weights = np.exp((scores - scores.max()) / temperature)
    votes: dict[str, float] = {}
    for match, weight in zip(matches, weights):
        votes[match.get("category", "")] = votes.get(match.get("category", ""), 0.0) + float(weight)
    return {name: vote / float(weights.sum()) for name, vote in votes.items()}


def predict_category(matches: Sequence[dict], temperature: float = VOTE_TEMPERATURE) -> tuple[str, float]:
    """The vote's winner: (category, share of the vote); ("", 0.0) without neighbours."""
    votes = category_votes(matches, temperature)
    if not votes:
        return "", 0.0
    best = max(votes, key=lambda name: votes[name])
    return best, votes[best]


def prior_score(match: dict, votes: dict[str, float], weight: float) -> float:
    """A product's rank score under the category prior: cosine + weight x its category's share."""
    return float(match["score"]) + weight * votes.get(match.get("category", ""), 0.0)


def in_category(category: str, where: Filter | None = None) -> Filter:
    """``where`` and ``category == category``."""
    return Filter((Condition("category", "eq", category),)).and_(where)
