"""Start a non-autoregressive model's encoder from a trained autoregressive Transformer's
(``--init-encoder-from``), as the refine_nat reference code does (its ``--load_encoder_from``):
the source side of both models reads the same sentences, and a NAT trained from scratch spends
its first thousands of updates learning what the teacher's encoder already knows.

The encoder (and its embedding matrix, with --share-all-embeddings the model's only one) is
copied once, when a fresh model is built for training; a resumed training and a trained
checkpoint keep their own weights. The encoder's computation follows the checkpoint's (LayerNorm
placement, positions, embedding scale), its size must match, and so must the dictionaries.
"""

import os

from fairseq import checkpoint_utils

from nar_refine.dictionaries import FINGERPRINT_KEY, recorded_mismatch
from nar_refine.errors import NARConfigError

# what the encoder's weights mean: taken from the checkpoint
ENCODER_STYLE = ("encoder_normalize_before", "encoder_learned_pos", "no_scale_embedding",
                 "layernorm_embedding", "activation_fn", "no_token_positional_embeddings")
# what the encoder's weights are: must match
ENCODER_SIZE = ("encoder_embed_dim", "encoder_ffn_embed_dim", "encoder_layers",
                "encoder_attention_heads")


def add_args(parser):
    parser.add_argument("--init-encoder-from", metavar="CKPT",
                        help="start the encoder (and its embeddings) from this trained fairseq "
                        "Transformer's, e.g. the autoregressive teacher, as the reference code's "
                        "--load_encoder_from; its encoder's LayerNorm placement, positions and "
                        "embedding scale are adopted, its size and dictionaries must match. Used "
                        "when a fresh model is built for training only")


def read_encoder_checkpoint(path):
    """The checkpoint at ``path`` (refused in one line unless it holds a Transformer encoder)."""
    if not os.path.isfile(path):
        raise NARConfigError(f"--init-encoder-from {path}: no such checkpoint file")
    try:
        state = checkpoint_utils.load_checkpoint_to_cpu(path)
    except Exception as err:  # a file that is not a torch checkpoint
        raise NARConfigError(f"--init-encoder-from {path}: not a fairseq checkpoint ({err})") from err
    model_cfg = (state.get("cfg") or {}).get("model") if isinstance(state, dict) else None
    if model_cfg is None or not any(k.startswith("encoder.layers.") for k in state.get("model", {})):
        raise NARConfigError(f"--init-encoder-from {path}: not a fairseq checkpoint with a "
                             f"Transformer encoder (e.g. the autoregressive teacher)")
    return state


def adopt_encoder_style(args, state, path):
    """Set ``args``' encoder options to the checkpoint's, before the model is built; refuse an
    encoder of another size, naming the option."""
    theirs = state["cfg"]["model"]
    for key in ENCODER_SIZE:
        mine, other = getattr(args, key, None), getattr(theirs, key, None)
        if other is not None and mine is not None and mine != other:
            raise NARConfigError(
                f"--init-encoder-from {path}: its encoder has --{key.replace('_', '-')} {other}, "
                f"this model {mine}; give the model the checkpoint's encoder size")
    for key in ENCODER_STYLE:
        if getattr(theirs, key, None) is not None:
            setattr(args, key, getattr(theirs, key))


def load_encoder(model, state, task, path):
    """Copy the checkpoint's ``encoder.*`` weights into ``model.encoder`` (all of them, and
    nothing else missing), after checking that its dictionaries are the task's."""
    record = (state.get("task_state") or {}).get(FINGERPRINT_KEY)
    if record is not None:
        problem = recorded_mismatch(record, task.source_dictionary, task.target_dictionary,
                                    ("checkpoint", "task"))
    else:  # no record (trained without the plugin): the sizes at least
        rows = state["model"]["encoder.embed_tokens.weight"].size(0)
        problem = (None if rows == len(task.source_dictionary) else
                   f"source dictionary sizes differ: checkpoint {rows}, task {len(task.source_dictionary)}")
    if problem:
        raise NARConfigError(f"--init-encoder-from {path} does not share this task's "
                             f"dictionaries: {problem}")
    weights = {k[len("encoder."):]: v for k, v in state["model"].items() if k.startswith("encoder.")}
    try:
        result = model.encoder.load_state_dict(weights, strict=False)
    except RuntimeError as err:  # shapes
        reason = str(err).strip().splitlines()[-1].strip()
        raise NARConfigError(f"--init-encoder-from {path}: its encoder's weights do not fit this "
                             f"model's encoder: {reason}") from None
    missing = [k for k in result.missing_keys if not k.endswith("version")]
    unexpected = [k for k in result.unexpected_keys if not k.endswith("version")]
    if missing or unexpected:
        raise NARConfigError(
            f"--init-encoder-from {path}: its encoder's weights do not fit this model's encoder "
            f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    return len(weights)
