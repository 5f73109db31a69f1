"""ArithmeticDataModule: the embedded task's sizes and limits."""

from rgra_lightning.data import ArithmeticDataModule


def test_arithmetic_task_applies_limit_and_train_size():
    full = ArithmeticDataModule(val_size=128)
    full.setup()
    data = ArithmeticDataModule(val_size=128, limit=3, train_size=50)
    data.setup()
    assert data.val_examples == data.test_examples == full.val_examples[:3]
    assert len(data.train_examples) == 50 and len(full.train_examples) == 1287 - 128
    assert all(e in full.train_examples for e in data.train_examples)
    again = ArithmeticDataModule(val_size=128, limit=3, train_size=50)
    again.setup()
    assert again.train_examples == data.train_examples
    assert len(data.train_dataloader()) == 50 // 8

