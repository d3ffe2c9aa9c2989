"""What reading a data file may not do (issue #11): hang on a FIFO or /dev/zero named like a data file."""
import os

import pytest

from lora_core import data
from lora_core.errors import DataError


@pytest.mark.timeout(20)
def test_a_fifo_or_a_device_named_like_a_data_file_is_refused_at_once(tmp_path):
    fifo = tmp_path / "pipe.csv"
    os.mkfifo(fifo)
    zero = tmp_path / "zero.jsonl"
    zero.symlink_to("/dev/zero")
    for path in (fifo, zero):
        with pytest.raises(DataError, match="not a regular file"):
            data.preview(str(path))
