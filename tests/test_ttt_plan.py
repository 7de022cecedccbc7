import numpy as np
import pytest

from pgolf.ttt_plan import (Doc, batches, chunk_passes, global_step_docs, phase_bounds, processing_order, rank_share,
                             split_documents)


def test_documents_partition_the_stream_targets():
    """Each target belongs to exactly one document; a document's last target is the next BOS."""
    tokens = np.array([1, 5, 6, 1, 7, 1, 1, 8, 9, 9], dtype=np.uint16)
    docs = split_documents(tokens, bos_id=1)
    assert [(d.index, d.start, d.num_targets) for d in docs] == [(0, 0, 3), (1, 3, 2), (2, 5, 1), (3, 6, 3)]
    covered = np.concatenate([np.arange(d.start + 1, d.start + 1 + d.num_targets) for d in docs])
    assert sorted(covered) == list(range(1, tokens.size))


def test_stream_without_leading_bos_is_refused():
    with pytest.raises(ValueError, match="does not start with BOS"):
        split_documents(np.array([5, 1, 6], dtype=np.uint16), bos_id=1)


def test_documents_go_longest_first_and_phases_cut_that_order():
    tokens = np.array([1, 4, 1, 4, 4, 4, 1, 4, 4, 1, 4, 4, 4, 4], dtype=np.uint16)
    docs = split_documents(tokens, bos_id=1)  # targets: 2, 4, 3, 4
    assert phase_bounds(4, [2, 9, 0]) == [(0, 2), (2, 4)]
    order = processing_order(docs, [2])
    assert [[d.index for d in phase] for phase in order] == [[1, 3], [2, 0]]  # ties: file order
    assert [d.index for d in rank_share(order[0] + order[1], 1, 2)] == [3, 0]
    by_file = processing_order(docs, [2], "file")  # the chunked form: phases in file order
    assert [[d.index for d in phase] for phase in by_file] == [[1, 0], [3, 2]]
    assert [len(b) for b in batches(docs, 3)] == [3, 1]


def test_chunk_passes_are_the_busiest_ranks_longest_documents_in_chunks():
    docs = [Doc(i, 0, n) for i, n in enumerate([100, 10, 50, 40, 9, 8])]
    # one rank, batches of 2 longest first: (100, 50) (40, 10) (9, 8) -> 10 + 4 + 1 passes of 10 targets
    assert chunk_passes(docs, [], "length", 2, 10, 1) == 15
    # two ranks: rank 0 takes 100, 40, 9 -> (100, 40) (9); rank 1 takes 50, 10, 8 -> (50, 10) (8)
    assert chunk_passes(docs, [], "length", 2, 10, 2) == 11
    # a phase cut after the 2 longest: (100, 50) | (40, 10) (9, 8) on one rank, the same passes
    assert chunk_passes(docs, [2], "length", 2, 10, 1) == 15


def test_global_steps_train_on_every_scored_document_or_on_the_phase_just_scored():
    phases = [[Doc(0, 0, 5)], [Doc(1, 6, 4), Doc(2, 11, 3)], [Doc(3, 15, 2)]]
    assert global_step_docs(phases, 1, "scored") == [Doc(0, 0, 5), Doc(1, 6, 4), Doc(2, 11, 3)]
    assert global_step_docs(phases, 1, "phase") == [Doc(1, 6, 4), Doc(2, 11, 3)]
