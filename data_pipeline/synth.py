"""Synthetic raw data in the *real* Amazon-2014 and Yelp formats, with structure a recommender can learn.

The demo and the tests feed these files through the real readers, so the real code path always runs.
What makes the data useful rather than random:
- Items come from per-category vocabularies (sub-categories -> product nouns) plus modifiers, product
  lines and brands shared by every category, so titles overlap heavily (like real products) and a model
  pretrained on some categories sees familiar words in the held-out ones (zero-shot transfer is plausible).
- Items are grouped into product *lines* (brand + line name + a sub-category, e.g. a skin-care regimen).
  Each item has a successor set: the next item of its line and two fixed complements from its
  sub-category. After item A a user's next item comes from A's successor set with probability
  `p_successor`: a first-order Markov model can learn this, popularity cannot (tests/test_synth.py).
- Users have latent tastes (two preferred sub-categories, two brands); item popularity is power-law
  (Zipf over a random rank order); timestamps strictly increase per user (day resolution, as in Amazon).
- Preprocessing has work to do: a fraction of users have 3-4 items (under 5-core), tail items get few
  interactions, `duplicate_rate` of reviews appear twice, meta files list some never-reviewed products.
  `meta_missing_rate` (default 0, because preprocessing rejects items without text by default) leaves
  items out of the meta file to exercise the readers' `items_without_meta` count.

Determinism: every category and Yelp draw from their own numpy Generator seeded by (seed, crc32(name)),
so the same seed gives byte-identical files (gzip mtime 0, no file name in the header) and adding a
category does not change the others. Files are written to a temp name and renamed.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import zlib
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from fusionrec.fileio import atomic_write_bytes

# ------------------------------------------------------------------------------------------- vocabularies
# Sub-categories and product nouns per category. Some sub-categories and nouns recur across categories on
# purpose (Sports Nutrition, Athletic Clothing, Personal Care, Outdoor Play, ...).
CATEGORY_VOCAB: dict[str, dict[str, list[str]]] = {
    "Beauty": {
        "Skin Care": [
            "Facial Cleanser",
            "Toner",
            "Moisturizer",
            "Serum",
            "Eye Cream",
            "Face Mask",
            "Sunscreen",
        ],
        "Makeup": [
            "Foundation",
            "Concealer",
            "Mascara",
            "Eyeliner",
            "Lipstick",
            "Lip Gloss",
            "Eyeshadow Palette",
        ],
        "Hair Care": ["Shampoo", "Conditioner", "Hair Mask", "Hair Oil", "Styling Gel", "Dry Shampoo"],
        "Fragrance": ["Eau de Parfum", "Eau de Toilette", "Body Mist", "Cologne"],
        "Nail Care": ["Nail Polish", "Top Coat", "Base Coat", "Nail File", "Cuticle Oil"],
        "Personal Care": ["Body Wash", "Body Lotion", "Hand Cream", "Lip Balm", "Deodorant"],
    },
    "Health": {
        "Vitamins": ["Multivitamin", "Vitamin D3", "Fish Oil", "Probiotic", "Biotin", "Magnesium"],
        "Personal Care": ["Body Lotion", "Hand Cream", "Lip Balm", "Deodorant", "Sunscreen"],
        "Oral Care": ["Toothpaste", "Electric Toothbrush", "Mouthwash", "Dental Floss"],
        "Medical Supplies": ["Thermometer", "First Aid Kit", "Blood Pressure Monitor", "Heating Pad"],
        "Sports Nutrition": ["Protein Powder", "Energy Bar", "Electrolyte Drink", "Pre-Workout"],
        "Shaving": ["Razor", "Shaving Cream", "Aftershave", "Beard Oil"],
    },
    "Sports": {
        "Exercise & Fitness": ["Yoga Mat", "Resistance Band", "Dumbbell Set", "Jump Rope", "Foam Roller"],
        "Outdoor Recreation": ["Camping Tent", "Sleeping Bag", "Hiking Backpack", "Headlamp", "Water Bottle"],
        "Cycling": ["Bike Helmet", "Bike Light", "Cycling Gloves", "Bike Lock", "Tire Pump"],
        "Team Sports": ["Soccer Ball", "Basketball", "Shin Guards", "Baseball Glove"],
        "Athletic Clothing": ["Running Shorts", "Compression Shirt", "Sports Bra", "Athletic Socks"],
        "Sports Nutrition": ["Protein Powder", "Energy Bar", "Electrolyte Drink"],
    },
    "Toys": {
        "Building Toys": ["Building Blocks Set", "Magnetic Tiles", "Construction Kit", "Marble Run"],
        "Dolls & Accessories": ["Fashion Doll", "Baby Doll", "Dollhouse", "Doll Clothes"],
        "Games": ["Board Game", "Card Game", "Jigsaw Puzzle", "Strategy Game"],
        "Learning & Education": ["Science Kit", "Magnetic Easel", "Coloring Book", "Flash Cards"],
        "Outdoor Play": ["Water Blaster", "Kite", "Jump Rope", "Soccer Ball", "Bubble Machine"],
        "Arts & Crafts": ["Crayon Set", "Modeling Clay", "Bead Kit", "Sticker Book"],
    },
    "Home": {
        "Kitchen & Dining": [
            "Chef Knife",
            "Cutting Board",
            "Nonstick Skillet",
            "Mixing Bowl Set",
            "Coffee Maker",
        ],
        "Bedding": ["Sheet Set", "Duvet Cover", "Pillow", "Mattress Topper"],
        "Bath": ["Bath Towel Set", "Shower Curtain", "Bath Mat", "Soap Dispenser"],
        "Storage & Organization": ["Storage Bin", "Drawer Organizer", "Closet Shelf", "Laundry Basket"],
        "Home Decor": ["Throw Pillow", "Wall Clock", "Picture Frame", "Scented Candle"],
        "Cleaning": ["Microfiber Cloth", "Spray Mop", "Scrub Brush", "Vacuum Filter"],
    },
    "Clothing": {
        "Women": ["Dress", "Blouse", "Leggings", "Cardigan", "Skirt"],
        "Men": ["T-Shirt", "Button-Down Shirt", "Chinos", "Hoodie", "Jeans"],
        "Shoes": ["Running Shoes", "Sneakers", "Sandals", "Boots", "Slippers"],
        "Athletic Clothing": ["Running Shorts", "Compression Shirt", "Sports Bra", "Athletic Socks"],
        "Accessories": ["Watch", "Sunglasses", "Wallet", "Belt", "Scarf"],
        "Jewelry": ["Necklace", "Earrings", "Bracelet", "Ring"],
    },
    "Pet": {
        "Dogs": ["Dog Food", "Dog Treats", "Dog Leash", "Dog Bed", "Chew Toy"],
        "Cats": ["Cat Food", "Cat Litter", "Scratching Post", "Cat Toy"],
        "Grooming": ["Pet Shampoo", "Grooming Brush", "Nail Clipper", "Conditioner"],
        "Fish & Aquatic": ["Aquarium Filter", "Fish Food", "Water Conditioner"],
        "Health & Supplies": ["Flea Treatment", "Pet Vitamins", "Probiotic", "First Aid Kit"],
    },
    "Office": {
        "Writing": ["Gel Pen Set", "Mechanical Pencil", "Highlighter", "Fountain Pen"],
        "Paper": ["Spiral Notebook", "Sticky Notes", "Printer Paper", "Planner"],
        "Organization": ["Desk Organizer", "File Folder", "Binder", "Storage Bin"],
        "Electronics": ["Label Maker", "Calculator", "Paper Shredder", "Desk Lamp"],
    },
}
DEFAULT_CATEGORIES = ("Beauty", "Toys", "Sports", "Health", "Home", "Clothing")

MODIFIERS = ["Premium", "Organic", "Professional", "Classic", "Deluxe", "Mini", "Ultra", "Natural", "Advanced",
             "Gentle", "Lightweight", "Heavy Duty", "Travel", "Everyday", "Original", "Sensitive", "Compact",
             "Soft", "Eco-Friendly", "Waterproof", "Portable", "Essential"]  # fmt: skip
VARIANTS = ["Black", "White", "Blue", "Pink", "Red", "Green", "Gray", "Navy", "Rose", "Lavender", "Unscented",
            "Vanilla", "Citrus", "Coconut", "Mint"]  # fmt: skip
SIZES = [
    "8 oz",
    "16 oz",
    "1.7 oz",
    "Pack of 2",
    "Pack of 3",
    "Set of 4",
    "Large",
    "Medium",
    "Small",
    "12 Count",
]
LINE_HEADS = ["Hydra", "Pure", "Vita", "Aqua", "Flex", "Max", "Eco", "Glow", "Terra", "Nova", "Zen", "Active",
              "Smart", "Fresh", "Prime", "Silk", "Core", "Luxe"]  # fmt: skip
LINE_TAILS = [
    "Glow",
    "Fit",
    "Care",
    "Pro",
    "Plus",
    "Boost",
    "Lite",
    "Touch",
    "Essentials",
    "Comfort",
    "Shield",
]
BRAND_HEADS = ["Ac", "Bel", "Cor", "Dra", "El", "Fen", "Gal", "Hal", "Iv", "Jor", "Kel", "Lum", "Mar", "Nor", "Or",
               "Pel", "Quin", "Ros", "Sol", "Tor", "Ul", "Ver", "Wil", "Zan"]  # fmt: skip
BRAND_TAILS = ["a", "o", "ex", "ia", "on", "ara", "ell", "is", "um", "ix", "ova", "ine"]
BRAND_SUFFIXES = ["", "", "", " Labs", " & Co.", " Naturals", " Home", " Sport", " Kids"]
FIRST_NAMES = ["Anna", "Ben", "Carla", "Dev", "Emma", "Farid", "Grace", "Hugo", "Ines", "Jon", "Kim", "Luis",
               "Mia", "Noah", "Olga", "Priya", "Quinn", "Raj", "Sara", "Tom", "Uma", "Vera", "Wen", "Yuki"]  # fmt: skip
OPINIONS = ["works great", "exactly as described", "good value", "would buy again", "not what I expected",
            "my new favorite", "does the job", "a bit pricey but worth it", "arrived quickly", "love it"]  # fmt: skip

_ALNUM = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"
_B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
_DAY = 86400


@dataclass
class SynthConfig:
    """Sizes and knobs of the generator (the `fusionrec synth` flags map onto these)."""

    seed: int = 0
    categories: tuple[str, ...] = DEFAULT_CATEGORIES
    users_per_category: int = 600
    items_per_category: int = 300
    yelp: bool = True
    yelp_users: int = 600
    yelp_items: int = 300
    mean_history: float = 8.0  # mean interactions per (long) user
    short_user_rate: float = 0.15  # users with 3-4 interactions: removed by 5-core
    p_successor: float = 0.6  # next item from the current item's successor set (the learnable signal)
    popularity_exponent: float = 0.9  # Zipf exponent of item popularity
    duplicate_rate: float = 0.01  # reviews written twice (dedupe has work)
    unreviewed_rate: float = 0.05  # extra meta/business lines for products nobody reviewed
    meta_missing_rate: float = 0.0  # reviewed items left out of the meta file
    start: str = "2010-01-01"
    end: str = "2014-07-01"
    brand_pool: int = 60  # brands shared by all categories; each category uses 14 of them
    # How an item's two fixed complements are drawn from its sub-category: "popular" (by popularity, which
    # keeps the head heavy and popularity strong) or "uniform" (the demo's world, where popularity is weak).
    complement_draw: str = "popular"
    # Share of Yelp businesses that belong to a venue group ("Golden Hydra": a pizzeria, a bar and a cafe of
    # one owner in one city); a group's next venue is its members' first successor, as a product line's next
    # item is on Amazon, so a model that learned "the next item shares the last one's leading words" on Amazon
    # has something to find on Yelp. 0 keeps independent businesses.
    yelp_group_share: float = 0.0

    def __post_init__(self) -> None:
        self.categories = tuple(self.categories)
        unknown = [c for c in self.categories if c not in CATEGORY_VOCAB]
        if unknown:
            raise ValueError(f"synth.categories: unknown {unknown}; known: {sorted(CATEGORY_VOCAB)}")
        if len(set(self.categories)) != len(self.categories):
            raise ValueError(f"synth.categories={self.categories}: duplicates")
        for key in ("users_per_category", "items_per_category", "yelp_users", "yelp_items"):
            if getattr(self, key) < 10:
                raise ValueError(f"synth.{key}={getattr(self, key)}: must be >= 10")
        for key in (
            "short_user_rate",
            "p_successor",
            "duplicate_rate",
            "unreviewed_rate",
            "meta_missing_rate",
            "yelp_group_share",
        ):
            if not 0.0 <= getattr(self, key) <= 1.0:
                raise ValueError(f"synth.{key}={getattr(self, key)}: must be in [0, 1]")
        if self.mean_history < 6:
            raise ValueError(f"synth.mean_history={self.mean_history}: must be >= 6 (long users have >= 5)")
        if self.popularity_exponent < 0 or self.brand_pool < 14:
            raise ValueError("synth: popularity_exponent must be >= 0 and brand_pool >= 14")
        if self.complement_draw not in ("popular", "uniform"):
            raise ValueError(
                f"synth.complement_draw={self.complement_draw!r}: must be 'popular' or 'uniform'"
            )
        if _day(self.end) <= _day(self.start):
            raise ValueError(f"synth: end {self.end!r} must be after start {self.start!r}")


def _day(date: str) -> int:
    return int(datetime.fromisoformat(date).replace(tzinfo=UTC).timestamp()) // _DAY


def _rng(seed: int, name: str) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(name.encode())])


def _pick(rng: np.random.Generator, seq: list[Any]) -> Any:
    return seq[int(rng.integers(len(seq)))]


def _token(rng: np.random.Generator, alphabet: str, n: int) -> str:
    return "".join(alphabet[i] for i in rng.integers(len(alphabet), size=n))


class _Ids:
    """Unique random ids across the whole run (ASINs, reviewer ids): a collision is redrawn."""

    def __init__(self) -> None:
        self.used: set[str] = set()

    def new(self, rng: np.random.Generator, prefix: str, alphabet: str, n: int) -> str:
        while True:
            value = prefix + _token(rng, alphabet, n)
            if value not in self.used:
                self.used.add(value)
                return value


# --------------------------------------------------------------------------------------------- the catalog
@dataclass
class _Catalog:
    """Items of one platform: per item its text fields, line, sub-category, popularity and successors."""

    ids: list[str] = field(default_factory=list)
    fields: list[dict[str, Any]] = field(default_factory=list)
    group: list[int] = field(default_factory=list)  # taste group: sub-category (Amazon) / top category (Yelp)
    brand: list[int] = field(default_factory=list)  # brand (Amazon) / city (Yelp)
    successors: list[list[int]] = field(default_factory=list)
    popularity: np.ndarray | None = None
    _arrays: tuple[np.ndarray, np.ndarray] | None = None

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """(group, brand) as numpy arrays, built once: every user's taste weighting reads them."""
        if self._arrays is None:
            self._arrays = (np.asarray(self.group), np.asarray(self.brand))
        return self._arrays


def _zipf(rng: np.random.Generator, n: int, exponent: float) -> np.ndarray:
    ranks = rng.permutation(n) + 1
    w = ranks.astype(np.float64) ** -exponent
    return w / w.sum()


def _line_sizes(rng: np.random.Generator, n_items: int) -> list[int]:
    sizes: list[int] = []
    while sum(sizes) < n_items:
        sizes.append(int(rng.choice([1, 2, 3, 4, 5], p=[0.15, 0.25, 0.3, 0.2, 0.1])))
    sizes[-1] -= sum(sizes) - n_items
    return [s for s in sizes if s > 0]


def _amazon_title(rng: np.random.Generator, brand: str, line: str, noun: str) -> str:
    title = f"{brand} {line} {_pick(rng, MODIFIERS)} {noun}"
    if rng.random() < 0.5:
        title += f", {_pick(rng, VARIANTS)}"
    if rng.random() < 0.6:
        title += f" ({_pick(rng, SIZES)})"
    return title


def _amazon_catalog(
    rng: np.random.Generator, cfg: SynthConfig, category: str, brands: list[str], ids: _Ids
) -> _Catalog:
    vocab = CATEGORY_VOCAB[category]
    subs = list(vocab)
    cat = _Catalog()
    for size in _line_sizes(rng, cfg.items_per_category):
        s, b = int(rng.integers(len(subs))), int(rng.integers(len(brands)))
        line = _pick(rng, LINE_HEADS) + _pick(rng, LINE_TAILS)
        nouns = [vocab[subs[s]][i] for i in rng.permutation(len(vocab[subs[s]]))]
        members = []
        for k in range(size):
            members.append(len(cat.ids))
            cat.ids.append(ids.new(rng, "B00", _ALNUM, 7))
            cat.group.append(s)
            cat.brand.append(b)
            cat.fields.append({"title": _amazon_title(rng, brands[b], line, nouns[k % len(nouns)]),
                               "brand": brands[b], "sub": subs[s], "noun": nouns[k % len(nouns)]})  # fmt: skip
        for k in range(size):  # the next product of the line first, complements after
            cat.successors.append([members[k + 1]] if k + 1 < size else [])
    cat.popularity = _zipf(rng, len(cat.ids), cfg.popularity_exponent)
    _add_complements(rng, cat, cfg.complement_draw == "popular")
    return cat


def _add_complements(rng: np.random.Generator, cat: _Catalog, by_popularity: bool) -> None:
    """Two fixed complements per item from the same taste group (or anywhere if the group is tiny).

    By popularity, what people buy next is itself mostly popular, which keeps the head heavy; uniform
    complements leave the sequential signal in the tail, where popularity cannot follow it.
    """
    groups: dict[int, list[int]] = {}
    for i, g in enumerate(cat.group):
        groups.setdefault(g, []).append(i)
    for i, succ in enumerate(cat.successors):
        pool = [j for j in groups[cat.group[i]] if j != i and j not in succ] or [
            j for j in range(len(cat.ids)) if j != i
        ]
        p = cat.popularity[pool] / cat.popularity[pool].sum() if by_popularity else None
        for j in rng.choice(len(pool), size=min(2, len(pool)), replace=False, p=p):
            succ.append(pool[int(j)])


# ----------------------------------------------------------------------------------------------- behaviour
def _user_cdf(
    rng: np.random.Generator, cat: _Catalog, n_groups: int, n_brands: int, home: int | None = None
) -> np.ndarray:
    """Popularity reweighted by a latent taste: 2 preferred groups (x6) and 2 brands or a home city."""
    groups, brands = cat.arrays()
    w = cat.popularity.copy()
    for g in rng.choice(n_groups, size=min(2, n_groups), replace=False):
        w[groups == g] *= 6.0
    if home is None:
        for b in rng.choice(n_brands, size=min(2, n_brands), replace=False):
            w[brands == b] *= 4.0
    else:
        w[brands == home] *= 40.0  # Yelp users review mostly in their home city
    cdf = np.cumsum(w)
    return cdf / cdf[-1]


def _stars(x: float) -> float:
    return float(min(5, max(1, round(x))))


def _history_length(rng: np.random.Generator, cfg: SynthConfig) -> int:
    if rng.random() < cfg.short_user_rate:
        return int(rng.integers(3, 5))
    return 5 + int(rng.geometric(1.0 / (cfg.mean_history - 4.0))) - 1


def _walk(rng: np.random.Generator, cat: _Catalog, cdf: np.ndarray, length: int, p_succ: float) -> list[int]:
    """One user's items: a taste draw, then successor steps with probability p_succ; no repeats."""
    seq = [int(np.searchsorted(cdf, rng.random(), side="right"))]
    seen = set(seq)
    while len(seq) < min(length, len(cat.ids)):
        succ = cat.successors[seq[-1]]
        nxt = -1
        if succ and rng.random() < p_succ:
            nxt = succ[0] if rng.random() < 0.6 else _pick(rng, succ)
        for _ in range(20):
            if nxt >= 0 and nxt not in seen:
                break
            nxt = int(np.searchsorted(cdf, rng.random(), side="right"))
        if nxt in seen:
            break
        seq.append(nxt)
        seen.add(nxt)
    return seq


# ------------------------------------------------------------------------------------------------- Amazon
def _review_time(day: int) -> str:
    d = datetime.fromtimestamp(day * _DAY, tz=UTC)
    return f"{d.month:02d} {d.day}, {d.year}"  # the 2014 dump's "MM D, YYYY"


def _amazon_reviews(
    rng: np.random.Generator, cfg: SynthConfig, cat: _Catalog, n_brands: int, ids: _Ids
) -> tuple[list[tuple], int]:
    """Review lines keyed for the asin-grouped file order of the real dumps; returns (rows, duplicates)."""
    n_groups = max(cat.group) + 1
    quality = rng.normal(4.1, 0.5, size=len(cat.ids))
    start, span = _day(cfg.start), _day(cfg.end) - _day(cfg.start)
    rows, dups = [], 0
    for _ in range(cfg.users_per_category):
        user, name = ids.new(rng, "A", _ALNUM, 13), _pick(rng, FIRST_NAMES)
        seq = _walk(
            rng, cat, _user_cdf(rng, cat, n_groups, n_brands), _history_length(rng, cfg), cfg.p_successor
        )
        day = start + int(rng.integers(span // 2))
        for item in seq:
            day += 1 + int(rng.geometric(1 / 15))  # strictly increasing, so the true order is recoverable
            f = cat.fields[item]
            rec = {"reviewerID": user, "asin": cat.ids[item], "reviewerName": name,
                   "helpful": [int(h) for h in sorted(rng.integers(0, 6, size=2))],
                   "reviewText": f"This {f['noun'].lower()} {_pick(rng, OPINIONS)}.",
                   "overall": _stars(quality[item] + rng.normal(0, 0.8)),
                   "summary": _pick(rng, OPINIONS).capitalize(), "unixReviewTime": day * _DAY,
                   "reviewTime": _review_time(day)}  # fmt: skip
            line = json.dumps(rec)
            copies = 2 if rng.random() < cfg.duplicate_rate else 1
            dups += copies - 1
            rows.extend([(cat.ids[item], day, user, line)] * copies)
    rows.sort()
    return rows, dups


def _amazon_meta(rng: np.random.Generator, category: str, cat: _Catalog, i: int, rank: int) -> dict[str, Any]:
    f, asin = cat.fields[i], cat.ids[i]
    rec: dict[str, Any] = {"asin": asin}
    if rng.random() < 0.7:
        rec["description"] = (
            f"{f['title']}. A {_pick(rng, MODIFIERS).lower()} {f['noun'].lower()} for {f['sub'].lower()}."
        )
    rec["title"] = f["title"]
    rec["imUrl"] = f"http://ecx.images-amazon.com/images/I/{_token(rng, _ALNUM + 'abcdefghijkmn', 11)}.jpg"
    related = {"also_bought": [cat.ids[j] for j in cat.successors[i]],
               "also_viewed": [cat.ids[int(j)] for j in rng.choice(len(cat.ids), size=3, replace=False) if j != i]}  # fmt: skip
    if cat.successors[i]:
        related["bought_together"] = [cat.ids[cat.successors[i][0]]]
    rec["related"] = related
    if rng.random() < 0.9:
        rec["salesRank"] = {category: rank}
    rec["categories"] = [[category, f["sub"], f["noun"]]] + (
        [[category, f["sub"]]] if rng.random() < 0.3 else []
    )
    if rng.random() < 0.85:
        rec["price"] = round(float(np.exp(rng.normal(2.8, 0.7))), 2)
    if rng.random() < 0.9:
        rec["brand"] = f["brand"]
    return rec


def _unreviewed_meta(rng: np.random.Generator, category: str, brands: list[str], ids: _Ids) -> dict[str, Any]:
    """A product the meta file lists but nobody reviewed (the real meta files list whole catalogs)."""
    vocab = CATEGORY_VOCAB[category]
    noun = _pick(rng, vocab[_pick(rng, list(vocab))])
    return {"asin": ids.new(rng, "B00", _ALNUM, 7), "title": _amazon_title(rng, _pick(rng, brands), "Basic", noun),
            "categories": [[category]], "salesRank": {category: int(rng.integers(10**5, 10**6))}}  # fmt: skip


def _amazon_category(
    out: Path, cfg: SynthConfig, category: str, brand_pool: list[str], ids: _Ids
) -> dict[str, Any]:
    rng = _rng(cfg.seed, category)
    brands = [brand_pool[int(j)] for j in rng.choice(len(brand_pool), size=14, replace=False)]
    cat = _amazon_catalog(rng, cfg, category, brands, ids)
    rows, dups = _amazon_reviews(rng, cfg, cat, len(brands), ids)
    reviewed = {r[0] for r in rows}
    ranks = (
        np.argsort(np.argsort(-cat.popularity)) * 37 + 1
    )  # salesRank follows popularity, sparse like real ones
    meta_lines, missing = [], 0
    for i, asin in enumerate(cat.ids):
        if asin in reviewed and rng.random() < cfg.meta_missing_rate:
            missing += 1
            continue
        meta_lines.append(repr(_amazon_meta(rng, category, cat, i, int(ranks[i]))))
    extra = int(round(cfg.unreviewed_rate * len(cat.ids)))
    meta_lines += [repr(_unreviewed_meta(rng, category, brands, ids)) for _ in range(extra)]
    files = [_write(out / f"reviews_{category}_5.json.gz", [r[3] for r in rows]),
             _write(out / f"meta_{category}.json.gz", meta_lines)]  # fmt: skip
    return {"format": "amazon2014", "platform": "amazon", "category": category, "files": files,
            "users": cfg.users_per_category, "items": len(reviewed), "reviews": len(rows), "duplicates": dups, "items_without_meta": missing,
            # catalog items the walks never reached are unreviewed too
            "meta_items_without_interactions": extra + len(cat.ids) - len(reviewed)}  # fmt: skip


# --------------------------------------------------------------------------------------------------- Yelp
YELP_VOCAB: dict[str, list[str]] = {
    "Restaurants": ["Italian", "Mexican", "Japanese", "Pizza", "Burgers", "Sushi Bars", "Thai", "Vegan"],
    "Nightlife": ["Bars", "Cocktail Bars", "Pubs", "Wine Bars"],
    "Coffee & Tea": ["Cafes", "Bakeries", "Desserts", "Juice Bars & Smoothies"],
    "Beauty & Spas": ["Hair Salons", "Nail Salons", "Day Spas", "Skin Care", "Cosmetics & Beauty Supply"],
    "Active Life": ["Gyms", "Yoga", "Fitness & Instruction", "Sporting Goods", "Bikes"],
    "Shopping": ["Home Decor", "Toy Stores", "Jewelry", "Shoe Stores", "Kitchen & Bath"],
    "Pets": ["Pet Groomers", "Pet Stores", "Veterinarians"],
}
YELP_COMPLEMENT = {"Restaurants": "Nightlife", "Nightlife": "Restaurants", "Coffee & Tea": "Shopping",
                   "Beauty & Spas": "Shopping", "Active Life": "Coffee & Tea", "Shopping": "Coffee & Tea",
                   "Pets": "Shopping"}  # fmt: skip
CITIES = [("Las Vegas", "NV", 36.17, -115.14), ("Phoenix", "AZ", 33.45, -112.07), ("Toronto", "ON", 43.65, -79.38),
          ("Charlotte", "NC", 35.23, -80.84)]  # fmt: skip
YELP_NAME_PARTS = [
    "Golden",
    "Blue",
    "Corner",
    "Urban",
    "Sunny",
    "Little",
    "Royal",
    "Happy",
    "Old Town",
    "Desert",
]


def _yelp_fields(rng: np.random.Generator, top: str, name: str) -> dict[str, str]:
    subs = [_pick(rng, YELP_VOCAB[top]) for _ in range(2)]
    cats = list(dict.fromkeys([*subs, top]))
    return {
        "name": f"{name} {subs[0]}",
        "categories": ", ".join(cats[int(j)] for j in rng.permutation(len(cats))),
    }


def _yelp_group_catalog(rng: np.random.Generator, cfg: SynthConfig, ids: _Ids) -> _Catalog:
    """Businesses in venue groups (one owner, one city, 2-5 venues of different kinds) and single ones.

    A group's venues share its leading words ("Golden HydraCare Pizza", "Golden HydraCare Bars"); each
    venue's first successor is the group's next venue, then the nearby complements of `_yelp_successors`."""
    tops = list(YELP_VOCAB)
    cat = _Catalog()
    while len(cat.ids) < cfg.yelp_items:
        city = int(rng.integers(len(CITIES)))
        if rng.random() < cfg.yelp_group_share:
            size = int(rng.integers(2, 6))
            name = f"{_pick(rng, YELP_NAME_PARTS)} {_pick(rng, LINE_HEADS)}{_pick(rng, LINE_TAILS)}"
        else:
            size, name = 1, f"{_pick(rng, YELP_NAME_PARTS)} {_pick(rng, FIRST_NAMES)}'s"
        members = list(range(len(cat.ids), min(len(cat.ids) + size, cfg.yelp_items)))
        for i in members:
            t = int(rng.integers(len(tops)))
            cat.ids.append(ids.new(rng, "", _B64, 22))
            cat.group.append(t)
            cat.brand.append(city)
            cat.fields.append(_yelp_fields(rng, tops[t], name))
            cat.successors.append([i + 1] if i + 1 <= members[-1] else [])
    _yelp_successors(rng, cat, keep=cat.successors)
    cat.popularity = _zipf(rng, len(cat.ids), cfg.popularity_exponent)
    return cat


def _yelp_successors(rng: np.random.Generator, cat: _Catalog, keep: list[list[int]] | None = None) -> None:
    """A nearby complement (dinner -> bar) then a nearby business of the same kind, after `keep`'s."""
    tops = list(YELP_VOCAB)
    by_city_top: dict[tuple[int, int], list[int]] = {}
    for i in range(len(cat.ids)):
        by_city_top.setdefault((cat.brand[i], cat.group[i]), []).append(i)
    successors = []
    for i in range(len(cat.ids)):
        comp = by_city_top.get((cat.brand[i], tops.index(YELP_COMPLEMENT[tops[cat.group[i]]])), [])
        same = [j for j in by_city_top[(cat.brand[i], cat.group[i])] if j != i]
        first = keep[i] if keep is not None else []
        successors.append(
            first
            + [int(x) for x in ([_pick(rng, comp)] if comp else []) + ([_pick(rng, same)] if same else [])]
        )
    cat.successors = successors


def _yelp_catalog(rng: np.random.Generator, cfg: SynthConfig, ids: _Ids) -> _Catalog:
    if cfg.yelp_group_share > 0:
        return _yelp_group_catalog(rng, cfg, ids)
    tops = list(YELP_VOCAB)
    cat = _Catalog()
    chains = [f"{_pick(rng, YELP_NAME_PARTS)} {_pick(rng, LINE_HEADS)}" for _ in range(cfg.yelp_items // 6)]
    for _ in range(cfg.yelp_items):
        t, c = int(rng.integers(len(tops))), int(rng.integers(len(CITIES)))
        subs = [_pick(rng, YELP_VOCAB[tops[t]]) for _ in range(2)]
        name = (
            _pick(rng, chains)
            if rng.random() < 0.3
            else f"{_pick(rng, YELP_NAME_PARTS)} {_pick(rng, FIRST_NAMES)}'s"
        )
        cats = list(dict.fromkeys([*subs, tops[t]]))
        cat.ids.append(ids.new(rng, "", _B64, 22))
        cat.group.append(t)
        cat.brand.append(c)
        cat.fields.append(
            {
                "name": f"{name} {subs[0]}",
                "categories": ", ".join(cats[int(j)] for j in rng.permutation(len(cats))),
            }
        )
    _yelp_successors(rng, cat)
    cat.popularity = _zipf(rng, len(cat.ids), cfg.popularity_exponent)
    return cat


def _yelp_business(
    rng: np.random.Generator, cat: _Catalog, i: int, stars: float, count: int
) -> dict[str, Any]:
    city, state, lat, lon = CITIES[cat.brand[i]]
    return {"business_id": cat.ids[i], "name": cat.fields[i]["name"],
            "address": f"{int(rng.integers(1, 9999))} {_pick(rng, YELP_NAME_PARTS)} St", "city": city, "state": state,
            "postal_code": f"{int(rng.integers(10000, 99999))}", "latitude": round(lat + float(rng.normal(0, 0.05)), 6),
            "longitude": round(lon + float(rng.normal(0, 0.05)), 6), "stars": stars, "review_count": count,
            "is_open": int(rng.random() < 0.85),
            "attributes": {"RestaurantsPriceRange2": str(int(rng.integers(1, 5)))} if rng.random() < 0.7 else None,
            "categories": cat.fields[i]["categories"],
            "hours": {"Monday": "9:0-21:0", "Friday": "9:0-23:0"} if rng.random() < 0.6 else None}  # fmt: skip


def _yelp(out: Path, cfg: SynthConfig, ids: _Ids) -> dict[str, Any]:
    rng = _rng(cfg.seed, "yelp")
    cat = _yelp_catalog(rng, cfg, ids)
    start, span = _day("2012-01-01") * _DAY, 5 * 365 * _DAY
    home_p = np.array([0.35, 0.3, 0.2, 0.15])
    lines, stars_sum, counts, dups = [], np.zeros(len(cat.ids)), np.zeros(len(cat.ids), dtype=int), 0
    for _ in range(cfg.yelp_users):
        user = ids.new(rng, "", _B64, 22)
        cdf = _user_cdf(rng, cat, len(YELP_VOCAB), len(CITIES), home=int(rng.choice(len(CITIES), p=home_p)))
        t = start + int(rng.integers(span))
        for item in _walk(rng, cat, cdf, _history_length(rng, cfg), cfg.p_successor):
            t += 3600 + int(rng.integers(30 * _DAY))
            stars = _stars(rng.normal(3.9, 1.1))
            stars_sum[item] += stars
            counts[item] += 1
            rec = {"review_id": ids.new(rng, "", _B64, 22), "user_id": user, "business_id": cat.ids[item],
                   "stars": stars, "useful": int(rng.integers(0, 4)), "funny": 0, "cool": int(rng.integers(0, 2)),
                   "text": f"{cat.fields[item]['name']}: {_pick(rng, OPINIONS)}.",
                   "date": datetime.fromtimestamp(t, tz=UTC).strftime("%Y-%m-%d %H:%M:%S")}  # fmt: skip
            copies = 2 if rng.random() < cfg.duplicate_rate else 1
            dups += copies - 1
            lines.extend([json.dumps(rec)] * copies)
    business = []
    for i in range(len(cat.ids)):
        avg = round(2 * stars_sum[i] / counts[i]) / 2 if counts[i] else 0.0
        business.append(json.dumps(_yelp_business(rng, cat, i, float(avg), int(counts[i]))))
    unreviewed = int((counts == 0).sum())
    files = [_write(out / "yelp_academic_dataset_business.json", business),
             _write(out / "yelp_academic_dataset_review.json", lines)]  # fmt: skip
    return {"format": "yelp", "platform": "yelp", "files": files, "users": cfg.yelp_users,
            "items": int((counts > 0).sum()), "reviews": len(lines), "duplicates": dups,
            "meta_items_without_interactions": unreviewed}  # fmt: skip


# ------------------------------------------------------------------------------------------------ writing
def _write(path: Path, lines: list[str]) -> str:
    """Write lines to a temp name and rename; gzip header without mtime or file name -> stable bytes."""
    data = "".join(line + "\n" for line in lines).encode("utf-8")
    if path.name.endswith(".gz"):
        data = gzip.compress(data, compresslevel=6, mtime=0)
    atomic_write_bytes(path, data)
    return path.name


def _brand_pool(seed: int, n: int) -> list[str]:
    rng = _rng(seed, "brands")
    pool: list[str] = []
    while len(pool) < n:
        name = _pick(rng, BRAND_HEADS) + _pick(rng, BRAND_TAILS) + _pick(rng, BRAND_SUFFIXES)
        if name not in pool:
            pool.append(name)
    return pool


def generate(out_dir: str | Path, cfg: SynthConfig) -> dict[str, Any]:
    """Write every dataset of `cfg` into `out_dir`; returns a summary (also written as synth_summary.json)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ids = _Ids()
    brand_pool = _brand_pool(cfg.seed, cfg.brand_pool)
    datasets: dict[str, Any] = {}
    for category in cfg.categories:
        datasets[category.lower()] = _amazon_category(out, cfg, category, brand_pool, ids)
    if cfg.yelp:
        datasets["yelp"] = _yelp(out, cfg, ids)
    files = {}
    for name in sorted(f for d in datasets.values() for f in d["files"]):
        data = (out / name).read_bytes()
        files[name] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    summary = {
        "config": {**asdict(cfg), "categories": list(cfg.categories)},
        "datasets": datasets,
        "files": files,
    }
    _write(out / "synth_summary.json", [json.dumps(summary, indent=1, sort_keys=True)])
    return {"out_dir": str(out.resolve()), **summary}


def synth(
    out_dir: str | Path,
    seed: int = 0,
    categories: tuple[str, ...] | list[str] = DEFAULT_CATEGORIES,
    users_per_category: int = 600,
    items_per_category: int = 300,
    yelp: bool = True,
    **kw: Any,
) -> dict[str, Any]:
    """Synthetic Amazon-2014 categories (+ Yelp) in their real raw formats; see SynthConfig for `kw`."""
    cfg = SynthConfig(seed=seed, categories=tuple(categories), users_per_category=users_per_category,
                      items_per_category=items_per_category, yelp=yelp, **kw)  # fmt: skip
    return generate(out_dir, cfg)
