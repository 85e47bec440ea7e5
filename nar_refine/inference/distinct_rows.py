"""Work done once per distinct row: latent-search candidates of one sentence often decode to the
same translation, and then their delta posterior, their next decode and their teacher score are
the same computation repeated. ``on_distinct_rows`` runs it for the first row of each group of
equal rows and copies the result to the others (rows are equal when every key tensor is
bit-for-bit equal in them)."""

import torch


def row_keys(*keys):
    """N x K int64 matrix, one row per input row: the keys flattened side by side (floats by
    their bits, so that equal means bit-for-bit equal)."""
    cols = []
    for key in keys:
        key = key.reshape(key.size(0), -1)
        if key.dtype == torch.float64:
            key = key.contiguous().view(torch.int64)
        elif key.is_floating_point():  # fp16 / bf16 -> fp32 keeps distinct values distinct
            key = key.float().contiguous().view(torch.int32)
        cols.append(key.long())
    return torch.cat(cols, 1)


def distinct_rows(*keys):
    """(first, inverse): ``first`` the index of the first row of each group of equal rows,
    ascending; ``inverse`` the group of every row (rows r and first[inverse[r]] are equal)."""
    matrix = row_keys(*keys)
    n = matrix.size(0)
    unique, groups = torch.unique(matrix, dim=0, return_inverse=True)
    order = torch.arange(n, device=matrix.device)
    first = torch.full((unique.size(0),), n, dtype=torch.long, device=matrix.device)
    first = first.scatter_reduce(0, groups, order, reduce="amin")
    first, rank = first.sort()
    position = torch.empty_like(rank)
    position[rank] = torch.arange(rank.numel(), device=rank.device)
    return first, position[groups]


def take_rows(x, index):
    """Rows ``index`` of a tensor, or of an object with ``.index`` (a ``SourceEncoding``); None
    stays None."""
    if x is None:
        return None
    return x.index_select(0, index) if torch.is_tensor(x) else x.index(index)


def on_distinct_rows(fn, keys, *rows):
    """``fn(*rows)`` computed for the distinct rows only and expanded back to every row: ``rows``
    (tensors, or objects with ``.index``, first dimension N; None passes through) are cut to the
    first row of each group of rows with equal ``keys`` (a tuple of tensors), so this equals
    ``fn(*rows)`` when ``fn`` computes each row from that row's keys alone. ``fn`` returns a
    tensor or a tuple of tensors (None kept)."""
    first, inverse = distinct_rows(*keys)
    if first.numel() == inverse.numel():
        return fn(*rows)
    out = fn(*(take_rows(x, first) for x in rows))
    if isinstance(out, tuple):
        return tuple(o if o is None else o.index_select(0, inverse) for o in out)
    return out.index_select(0, inverse)
