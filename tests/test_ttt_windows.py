"""The windows a TTT chunk pass reads (pgolf.ttt_windows)."""
import numpy as np
import pytest
import torch

from test_ttt import BOS, CPU, doc_stream

from pgolf.ttt_plan import Doc, split_documents
from pgolf.ttt_windows import BatchSpans, chunk_windows, running_rows


def _old_chunk_windows(stream, batch, chunk, first_target, context):
    """The per-row slicing builder chunk_windows replaced: the reference it must agree with."""
    rows = [d for d in batch if d.num_targets > first_target]
    ends = [min(first_target + chunk, d.num_targets) for d in rows]
    lows = [max(0, end - context) for end in ends]
    width = max(end - low for end, low in zip(ends, lows))
    inputs = torch.zeros(len(rows), width, dtype=torch.long)
    targets = torch.zeros_like(inputs)
    scored = torch.zeros(len(rows), width, dtype=torch.bool)
    for r, (d, low, end) in enumerate(zip(rows, lows, ends)):
        inputs[r, :end - low] = stream[d.start + low:d.start + end]
        targets[r, :end - low] = stream[d.start + low + 1:d.start + end + 1]
        scored[r, first_target - low:end - low] = True
    return inputs, targets, scored


@pytest.mark.parametrize("chunk,context", [(8, 16), (5, 12), (7, 7), (3, 40)])
def test_chunk_windows_gather_what_the_row_slices_gave(chunk, context):
    """Ragged documents, every chunk: the same windows, and the same scored targets at the same columns."""
    tokens = doc_stream(seed=2, num_docs=9)
    stream = torch.from_numpy(tokens.astype(np.int64))
    batch = sorted(split_documents(tokens, BOS), key=lambda d: -d.num_targets)
    spans = BatchSpans.of(batch, CPU)
    for first in range(0, batch[0].num_targets, chunk):
        inputs, targets, scored = _old_chunk_windows(stream, batch, chunk, first, context)
        w = chunk_windows(stream, spans, inputs.size(0), chunk, first, context)
        assert torch.equal(w.inputs, inputs)
        mask = torch.zeros_like(scored)
        mask[torch.arange(w.cols.size(0))[:, None].expand_as(w.cols)[w.valid], w.cols[w.valid]] = True
        assert torch.equal(mask, scored)
        assert torch.equal(w.targets[w.valid], targets[scored])
        assert torch.equal(w.prev[w.valid], inputs[scored])


def test_a_chunk_runs_two_rows_while_its_batch_has_two():
    docs = [Doc(0, 0, 100), Doc(1, 0, 30), Doc(2, 0, 10)]
    assert [running_rows(docs, first) for first in (0, 16, 32, 96)] == [3, 2, 2, 2]
    assert running_rows(docs[:1], 96) == 1
