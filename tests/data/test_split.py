"""A validation split drawn from the training data: seeded, disjoint, complete, kept as drawn."""

import pytest

from so2nn.data import ValidationSplit, split_dataset


def test_the_split_is_seeded_disjoint_and_complete():
    split = ValidationSplit.draw(200, valid_fraction=0.1, seed=5)
    assert len(split.val_indices) == 20 and len(split.train_indices) == 180
    assert sorted(split.val_indices + split.train_indices) == list(range(200))
    assert ValidationSplit.draw(200, 0.1, seed=5) == split  # the same draw anywhere
    assert ValidationSplit.draw(200, 0.1, seed=6).val_indices != split.val_indices
    assert ValidationSplit.from_dict(split.to_dict()) == split
    train, val = split.apply(list(range(100, 300)))
    assert [val[i] - 100 for i in range(len(val))] == list(split.val_indices)
    assert train.split is split and val.split is split
    assert len(ValidationSplit.draw(3, 0.01).val_indices) == 1  # at least one frame held out


def test_bad_fractions_and_changed_data_raise():
    with pytest.raises(ValueError, match="valid_fraction must be between 0 and 1"):
        ValidationSplit.draw(10, 1.0)
    with pytest.raises(ValueError, match="leaves no training frames"):
        ValidationSplit.draw(1, 0.5)
    with pytest.raises(ValueError, match="the validation split was drawn for 10 frames, the data has 11"):
        ValidationSplit.draw(10, 0.2).apply(list(range(11)))
    train, val = split_dataset(list(range(10)), 0.3, seed=1)
    assert len(train) == 7 and len(val) == 3
