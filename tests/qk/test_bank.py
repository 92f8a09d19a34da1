import pytest
import torch

from qkcopy.qk.bank import Bank, BankHeader, StaleBankError, write_bank


def _header(n=10, model_hash="m1", data_hash="d1"):
    return BankHeader(n_rows=n, feature_dim=4, gist_dim=2, model_hash=model_hash, data_hash=data_hash, side="K")


def test_round_trip_in_any_batch_order(tmp_path):
    rows = torch.randn(10, 6)
    batches = [(torch.tensor([7, 8, 9]), rows[7:]), (torch.arange(7), rows[:7])]
    bank = write_bank(tmp_path / "k.bank", _header(), batches)
    torch.testing.assert_close(bank.rows.float(), rows.half().float())
    reopened = Bank.open(tmp_path / "k.bank", model_hash="m1", data_hash="d1")
    assert [s for s, _ in reopened.chunks(4)] == [0, 4, 8]
    torch.testing.assert_close(torch.cat([c for _, c in reopened.chunks(4)]), rows.half().float())
    feat, gist = reopened.split(reopened.take(torch.tensor([2, 5])))
    assert feat.shape == (2, 4) and gist.shape == (2, 2) and feat.dtype == torch.float32


def test_stale_bank_is_refused(tmp_path):
    write_bank(tmp_path / "k.bank", _header(), [(torch.arange(10), torch.zeros(10, 6))])
    with pytest.raises(StaleBankError, match="model_hash"):
        Bank.open(tmp_path / "k.bank", model_hash="other")
    with pytest.raises(StaleBankError, match="data_hash"):
        Bank.open(tmp_path / "k.bank", data_hash="other")


def test_missing_rows_leave_no_file(tmp_path):
    with pytest.raises(ValueError, match="never written"):
        write_bank(tmp_path / "k.bank", _header(), [(torch.arange(9), torch.zeros(9, 6))])
    assert list(tmp_path.iterdir()) == []


def test_truncated_bank_is_refused(tmp_path):
    write_bank(tmp_path / "k.bank", _header(), [(torch.arange(10), torch.zeros(10, 6))])
    data = (tmp_path / "k.bank").read_bytes()
    (tmp_path / "k.bank").write_bytes(data[:-10])
    with pytest.raises(ValueError, match="damaged"):
        Bank.open(tmp_path / "k.bank")
