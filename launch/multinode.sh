#!/usr/bin/env bash
# Multi-node DeepSpeed launch for fusionrec training.
#
# Usage:
#   launch/multinode.sh [OPTIONS] -- ENTRY [ARGS...]
#     ENTRY is a script path, or `-m package.module` (e.g. `-m fusionrec.launch.cli train idgenrec ...`).
#
# Two forms:
#   1. Hostfile + ssh (run once, on the head node). DeepSpeed reaches every host of the hostfile with
#      pdsh/ssh (passwordless ssh required), exactly like `deepspeed --hostfile`:
#        launch/multinode.sh --hostfile launch/hostfile.example --master_addr 10.0.0.1 -- -m ...
#   2. Per node, no ssh (run the same command on every node, e.g. from SLURM or by hand), torchrun-style:
#        launch/multinode.sh --nnodes 2 --node_rank 0 --master_addr 10.0.0.1 --master_port 29500 -- -m ...
#        launch/multinode.sh --nnodes 2 --node_rank 1 --master_addr 10.0.0.1 --master_port 29500 -- -m ...
#      Uses `deepspeed --no_ssh --node_rank R`; the hostfile (only the host count and slots matter) is
#      generated from --nnodes x --nproc_per_node unless --hostfile is given.
#
# Options:
#   --hostfile FILE        DeepSpeed hostfile ("host slots=N" per line)
#   --nnodes N             number of nodes (form 2; default: number of hosts in the hostfile)
#   --node_rank R          this node's rank in [0, N) (selects form 2)
#   --nproc_per_node K     processes per node (GPUs per node; CPU ranks on a CPU machine). Default 1
#   --master_addr ADDR     address of node 0 (required for form 2; default 127.0.0.1 for form 1)
#   --master_port PORT     rendezvous port on node 0 (default 29500)
#   --dry_run              print the deepspeed command instead of running it
#
# Environment: every rank gets OMP_NUM_THREADS (default 1: a CPU rank per core; oversubscribed ranks ran
# 36x slower here), HF_HUB_OFFLINE/TOKENIZERS_PARALLELISM pass through. PYTHON selects the interpreter
# (default: python3 on PATH; use the project's .venv/bin/python).
set -euo pipefail

usage() { sed -n '2,31p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-2}"; }
die() { echo "multinode.sh: $*" >&2; exit 2; }

HOSTFILE="" NNODES="" NODE_RANK="" NPROC=1 MASTER_ADDR="" MASTER_PORT=29500 DRY_RUN=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --hostfile) HOSTFILE="${2:?}"; shift 2 ;;
    --nnodes) NNODES="${2:?}"; shift 2 ;;
    --node_rank) NODE_RANK="${2:?}"; shift 2 ;;
    --nproc_per_node) NPROC="${2:?}"; shift 2 ;;
    --master_addr) MASTER_ADDR="${2:?}"; shift 2 ;;
    --master_port) MASTER_PORT="${2:?}"; shift 2 ;;
    --dry_run) DRY_RUN=1; shift ;;
    -h|--help) usage 0 ;;
    --) shift; break ;;
    *) die "unknown option '$1' (see --help)" ;;
  esac
done
[[ $# -gt 0 ]] || die "missing ENTRY after '--' (a script path or -m module)"

is_int() { [[ "$1" =~ ^[0-9]+$ ]]; }
is_int "$NPROC" && (( NPROC >= 1 )) || die "--nproc_per_node must be a positive integer, got '$NPROC'"
is_int "$MASTER_PORT" || die "--master_port must be an integer, got '$MASTER_PORT'"
[[ -z "$HOSTFILE" || -f "$HOSTFILE" ]] || die "hostfile not found: $HOSTFILE"

ENTRY=()
if [[ "$1" == "-m" ]]; then
  [[ $# -ge 2 ]] || die "'-m' needs a module name"
  ENTRY=(--module "$2"); shift 2
else
  ENTRY=("$1"); shift
fi

PY="${PYTHON:-python3}"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
CMD=("$PY" -m deepspeed.launcher.runner --master_port "$MASTER_PORT")

if [[ -n "$NODE_RANK" ]]; then  # form 2: per node, no ssh
  is_int "$NODE_RANK" || die "--node_rank must be an integer, got '$NODE_RANK'"
  [[ -n "$MASTER_ADDR" ]] || die "--master_addr is required with --node_rank"
  if [[ -z "$HOSTFILE" ]]; then
    is_int "${NNODES:-x}" && (( NNODES >= 1 )) || die "--nnodes N is required with --node_rank (or give --hostfile)"
    HOSTFILE="$(mktemp "${TMPDIR:-/tmp}/fusionrec-hostfile.XXXXXX")"
    trap 'rm -f "$HOSTFILE"' EXIT
    for ((i = 0; i < NNODES; i++)); do echo "node$i slots=$NPROC"; done > "$HOSTFILE"
  else
    NNODES="${NNODES:-$(grep -cvE '^\s*(#|$)' "$HOSTFILE")}"
  fi
  (( NODE_RANK < NNODES )) || die "--node_rank $NODE_RANK must be < --nnodes $NNODES"
  CMD+=(--hostfile "$HOSTFILE" --no_ssh --node_rank "$NODE_RANK" --master_addr "$MASTER_ADDR"
        --num_nodes "$NNODES" --num_accelerators "$NPROC")
else  # form 1: hostfile + ssh, run on the head node
  [[ -n "$HOSTFILE" ]] || die "give --hostfile (ssh form) or --node_rank/--nnodes/--master_addr (per-node form)"
  CMD+=(--hostfile "$HOSTFILE" --master_addr "${MASTER_ADDR:-127.0.0.1}" --num_accelerators "$NPROC")
  [[ -z "$NNODES" ]] || CMD+=(--num_nodes "$NNODES")
fi
CMD+=("${ENTRY[@]}" "$@")

if (( DRY_RUN )); then
  printf '%q ' "${CMD[@]}"; echo
  exit 0
fi
"${CMD[@]}"
