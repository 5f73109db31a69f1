"""Reference answers from each dataset's answer format."""

import pytest

from rgra_lightning.data import DatasetError
from rgra_lightning.data.records import reference_answer


def test_reference_formats():
    assert reference_answer("so 1,234 #### 1,234", "gsm8k_solution", "r") == "1234"
    solution = "First $\\boxed{1}$, which is wrong, as the next steps will show. So \\boxed{\\frac{1}{2}}."
    assert reference_answer(solution, "boxed_solution", "r") == "\\frac{1}{2}"
    with pytest.raises(DatasetError, match="r: solution has no"):
        reference_answer("no box", "boxed_solution", "r")
