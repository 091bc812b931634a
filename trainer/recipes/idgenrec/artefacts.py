"""IDGenRec artefacts: a checkpoint's models for evaluation and export, and constrained-beam-search ranking.

Everything here reads checkpoints through ``trainer.checkpoint_reader`` and imports neither DeepSpeed nor the
training module, so a Ray actor (or any fresh process) can load a checkpoint and score users without them.
"""

from __future__ import annotations

import itertools
import shutil
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from fusionrec.trainer.checkpoint_reader import load_weights, read_module_state
from fusionrec.trainer.decoding import CompiledTrie, constrained_beam_search
from fusionrec.trainer.idgen.id_table import IDTable
from fusionrec.trainer.idgen.user_ids import UserIDTable
from fusionrec.trainer.metrics import MetricSums
from fusionrec.trainer.models.seq2seq import ModelConfig, build_seq2seq
from fusionrec.trainer.models.soft_ids import SoftIDRecommender
from fusionrec.trainer.models.tokenizer import load_tokenizer
from fusionrec.trainer.prompts import PromptBuilder, PromptConfig
from fusionrec.trainer.recipes.idgenrec.config import RankingConfig
from fusionrec.trainer.recipes.idgenrec.data import IDGenRecCollator, id_tokens


def build_trie(table: IDTable, tokens: Mapping[str, list[int]], decoder_start: int, eos: int) -> CompiledTrie:
    items = list(table)
    return CompiledTrie.build(
        [tokens[i] for i in items], items, decoder_start_token_id=decoder_start, eos_token_id=eos
    )


def table_from_state(state: Mapping[str, Any]) -> IDTable:
    table = IDTable(state["ids"], "generative", int(state["round"]), state.get("stats"))
    if table.hash != state["sha256"]:
        raise ValueError(f"checkpoint ID table hash {table.hash[:12]} != recorded {state['sha256'][:12]}")
    return table


# ---------------------------------------------------------------------- ranking + checkpoint loading
def evaluate(
    model: torch.nn.Module,
    tokenizer: Any,
    table: IDTable,
    trie: CompiledTrie,
    samples: Iterable[Mapping[str, Any]],
    cfg: RankingConfig,
    prompt: PromptConfig | None = None,
    tokens: Mapping[str, list[int]] | None = None,
    users: UserIDTable | None = None,
) -> MetricSums:
    """Rank each sample's target among all items of ``trie`` by constrained beam search (eval template).

    ``samples`` are loader samples ({user, history, target, ...}); targets must be in the table; ``users``
    is the run's user ID table when ``prompt.use_user_id``. Returns the mergeable :class:`MetricSums`
    (top-``cfg.top_k`` lists; HR/NDCG@``cfg.ks``, MRR@top_k).
    """
    tokens = tokens if tokens is not None else id_tokens(table, tokenizer)
    device = next(model.parameters()).device
    trie = trie.to(device) if trie.device != device else trie
    user_ids = users.as_dict() if users is not None else None
    builder = PromptBuilder(prompt or PromptConfig(), table.as_dict(), user_ids)
    collate = IDGenRecCollator("eval", tokenizer, builder, tokens, table.version)
    total = MetricSums(tuple(cfg.ks), cfg.top_k)
    it = (s for s in samples if not s.get("_pad"))  # loader padding copies are not users
    while chunk := list(itertools.islice(it, cfg.batch_size)):
        total = total + _rank_chunk(model, collate, trie, chunk, cfg)
    return total


def _rank_chunk(model, collate, trie, chunk, cfg: RankingConfig) -> MetricSums:
    batch = collate([dict(s) for s in chunk])
    exclude = [trie.indices(s["history"]) for s in chunk] if cfg.exclude_history else None
    ids, mask = batch["input_ids"].to(trie.device), batch["attention_mask"].to(trie.device)
    res = constrained_beam_search(model, ids, mask, trie, cfg.num_beams, cfg.top_k, exclude_items=exclude)
    targets = torch.tensor(trie.indices([s["target"] for s in chunk]))
    return MetricSums.from_topk(res.items.cpu(), targets, tuple(cfg.ks))


def set_trie_softmax(model: torch.nn.Module, on: bool) -> None:
    """Record how the recommender's scores are decoded: ``config.trie_softmax`` (our beam search) and, for an
    exported folder used with HF ``generate`` + ``prefix_allowed_tokens_fn``, ``renormalize_logits`` (HF's
    equivalent, tested in test_beam_search.py; HF's validation refuses a saved ``length_penalty`` without
    ``num_beams``, so ``length_penalty=0`` is the caller's, as documented in docs/evaluation.md)."""
    model.config.trie_softmax = on
    if on:
        model.generation_config.renormalize_logits = True


def load_idgenrec_for_eval(checkpoint_dir: str | Path) -> tuple[torch.nn.Module, Any, IDTable, CompiledTrie]:
    """(recommender, tokenizer, id_table, trie) from a ``step-N`` checkpoint, no process group needed.

    The checkpoint is verified (marker, sizes, hashes); the tokenizer and the model config travel in the
    module state, the weights are consolidated from any ZeRO stage, and the trie is rebuilt from the table
    the checkpoint carries (never from another round's table).
    """
    import tempfile

    path = Path(checkpoint_dir)
    module = verified_module_state(path)
    with tempfile.TemporaryDirectory(prefix="fusionrec-tok-") as tmp:
        for name, text in module["tokenizer_files"].items():
            (Path(tmp) / name).write_text(text, encoding="utf-8")
        tokenizer = load_tokenizer(tmp)
    model = build_seq2seq(ModelConfig(**module["recommender_config"]), tokenizer=tokenizer)
    set_trie_softmax(model, bool(module.get("trie_softmax", False)))  # older checkpoints: full softmax
    load_weights(SoftIDRecommender(model), path, "recommender")
    table = table_from_state(module["table"])
    tokens = id_tokens(table, tokenizer)
    trie = build_trie(table, tokens, int(model.config.decoder_start_token_id), tokenizer.eos_token_id)
    return model.eval(), tokenizer, table, trie


def load_user_table(checkpoint_dir: str | Path) -> UserIDTable | None:
    """The user ID table a ``step-N`` checkpoint carries (hash verified), or None for a run without user IDs."""
    path = Path(checkpoint_dir)
    state = verified_module_state(path).get("user_table")
    return UserIDTable.from_state(state, where=f"checkpoint {path}") if state is not None else None


def export_idgenrec(checkpoint_dir: str | Path, out_dir: str | Path) -> dict[str, Path]:
    """HF ``save_pretrained`` folders of both models + the tokenizer + the checkpoint's ID table(s) (JSON).

    ``out_dir/recommender``, ``out_dir/id_generator``, ``out_dir/tokenizer``, ``out_dir/id_table.json``
    (+ ``out_dir/user_id_table.json`` for a run with user IDs).
    """
    path, out = Path(checkpoint_dir), Path(out_dir)
    recommender, tokenizer, table, _ = load_idgenrec_for_eval(path)
    module = verified_module_state(path)
    generator = build_seq2seq(ModelConfig(**module["id_generator_config"]), tokenizer=tokenizer)
    load_weights(generator, path, "id_generator")
    written = {}
    for name, obj in (("recommender", recommender), ("id_generator", generator), ("tokenizer", tokenizer)):
        tmp = out / f".{name}.tmp"
        obj.save_pretrained(str(tmp))
        if (out / name).exists():
            shutil.rmtree(out / name)
        tmp.rename(out / name)
        written[name] = out / name
    written["id_table"] = table.save(out / "id_table.json")
    users = load_user_table(path)
    if users is not None:
        written["user_id_table"] = users.save(out / "user_id_table.json")
    return written


def verified_module_state(checkpoint_dir: str | Path) -> dict[str, Any]:
    """The IDGenRec module state of a verified (marker, sizes, hashes) ``step-N`` checkpoint.

    A checkpoint of another recipe, or one without the ID table its recommender was trained with, is a
    ValueError naming the checkpoint (not a KeyError later)."""
    path = Path(checkpoint_dir)
    if not path.is_dir():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    state = read_module_state(path)
    table = state.get("table")
    if not isinstance(table, Mapping) or not table.get("ids"):
        raise ValueError(
            f"checkpoint {path}: has no ID table (module state keys: {sorted(state)}); every IDGenRec "
            "checkpoint must carry the item -> textual ID table its recommender was trained with"
        )
    for key in ("tokenizer_files", "recommender_config", "id_generator_config"):
        if key not in state:
            raise ValueError(f"checkpoint {path}: module state lacks {key!r}; not an IDGenRec checkpoint")
    return state
