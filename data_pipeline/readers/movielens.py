"""MovieLens-1M: `ratings.dat` + `movies.dat` (`::`-separated, latin-1)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from ..errors import DataError
from ..records import RawDataset
from .common import _dataset, _existing, _Interactions, iter_lines


def _dat_fields(raw: bytes, n: int, names: tuple[str, ...], path: Path, lineno: int) -> list[str]:
    parts = raw.decode("latin-1").split("::")  # MovieLens-1M is latin-1: decoding never fails
    if len(parts) != n:
        raise DataError(path, lineno, f"expected {n} '::'-separated fields {names}, got {len(parts)}")
    return parts


def _dat_int(value: str, name: str, path: Path, lineno: int) -> int:
    try:
        return int(value)
    except ValueError:
        raise DataError(path, lineno, f"field '{name}' must be an integer, got {value!r}") from None


def read_movielens(input_dir: str | Path, name: str = "ml-1m") -> RawDataset:
    """Read MovieLens-1M `ratings.dat` (UserID::MovieID::Rating::Timestamp) + `movies.dat` (latin-1)."""
    input_dir = Path(input_dir)
    ratings_path, movies_path = _existing(input_dir, "ratings.dat"), _existing(input_dir, "movies.dat")
    inter, skipped = _Interactions(), Counter()
    names = ("UserID", "MovieID", "Rating", "Timestamp")
    for lineno, raw in iter_lines(ratings_path):
        if not raw.strip():
            skipped["blank_lines"] += 1
            continue
        user, movie, rating, ts = _dat_fields(raw, 4, names, ratings_path, lineno)
        _dat_int(user, "UserID", ratings_path, lineno)
        _dat_int(movie, "MovieID", ratings_path, lineno)
        inter.add(
            user,
            movie,
            _dat_int(ts, "Timestamp", ratings_path, lineno),
            float(_dat_int(rating, "Rating", ratings_path, lineno)),
        )
    if not inter.users:
        raise DataError(ratings_path, None, "no interactions (only blank lines)")
    wanted, meta = set(inter.items), {}
    for lineno, raw in iter_lines(movies_path):
        if not raw.strip():
            skipped["blank_lines"] += 1
            continue
        movie, title, genres = _dat_fields(raw, 3, ("MovieID", "Title", "Genres"), movies_path, lineno)
        _dat_int(movie, "MovieID", movies_path, lineno)
        if movie not in wanted:
            skipped["meta_items_without_interactions"] += 1
        elif movie in meta:
            skipped["duplicate_meta"] += 1
        else:
            meta[movie] = (title or None, None, [g for g in genres.split("|") if g], None, None)
    return _dataset(name, inter.table(), meta, [ratings_path, movies_path], skipped)
