"""Reference answers from each dataset's answer format; rows read from JSON, JSON Lines and CSV files as
the text the file holds, with errors naming the file line."""

import json
import time

import pytest

from rgra_lightning.data import DatasetError
from rgra_lightning.data.records import load_records, local_file_rows, reference_answer, shot_solution


def test_reference_formats():
    assert reference_answer("so 1,234 #### 1,234", "gsm8k_solution", "r") == "1234"
    solution = "First $\\boxed{1}$, which is wrong, as the next steps will show. So \\boxed{\\frac{1}{2}}."
    assert reference_answer(solution, "boxed_solution", "r") == "\\frac{1}{2}"
    with pytest.raises(DatasetError, match="r: solution has no"):
        reference_answer("no box", "boxed_solution", "r")
    with pytest.raises(DatasetError, match="r: missing or null"):
        reference_answer(None, "gsm8k_solution", "r")


@pytest.mark.parametrize(
    "solution, reference",
    [
        ("The roots are $\\boxed{1}$ and $\\boxed{2}$.", "1, 2"),  # a list answer stays one
        ("This yields $\\boxed{-b+2}$, or $\\boxed{2 - b}$.", "-b+2"),  # one value written twice
        ("So $\\boxed{\\frac{25}{13}}$, or $\\boxed{1\\frac{12}{13}}$.", "\\frac{25}{13}"),
        ("So $\\boxed{28}$, or $\\boxed{28_9}$.", "28, 28_9"),  # not equal as the verifier reads them
    ],
)
def test_a_solutions_adjacent_boxes_are_one_list_unless_they_write_one_value(solution, reference):
    assert reference_answer(solution, "boxed_solution", "r") == reference


def test_comparing_a_solutions_boxes_is_bounded_in_time():
    """sympy ran for minutes (killed after 60 s) comparing these two in the data module's setup, in the
    training process; the comparison now times out in a worker (3 s) and the boxes stay a list."""
    start = time.monotonic()
    solution = "$\\boxed{9^{9^{9}}}$, or $\\boxed{9^{387420489}}$"
    assert reference_answer(solution, "boxed_solution", "r") == "9^{9^{9}}, 9^{387420489}"
    assert time.monotonic() - start < 60


def test_a_json_lines_file_with_a_byte_order_mark_reads_as_without(tmp_path):
    file = tmp_path / "train.jsonl"
    file.write_bytes('\ufeff{"question": "1+1", "answer": "2"}\n'.encode())
    assert [(r["question"], r["reference"]) for r in read(file)] == [("1+1", "2")]


def read(file) -> list[dict[str, str]]:
    return load_records(local_file_rows(str(file), "data.train_file"), "question", "answer", "answer")[0]


def test_csv_cells_are_read_as_the_text_the_file_holds(tmp_path):
    """pandas guessed a type per column: ``007`` became ``7``, ``2`` beside ``0.50`` became ``2.0``, ``NA``
    a missing answer. A UTF-8 BOM and CRLF line ends are no part of the text."""
    file = tmp_path / "train.csv"
    cells = [("007", "007"), ("half", "0.50"), ("1+1", "2"), ("x", "NA"), ("big", "12345678901234567891")]
    file.write_bytes(("\ufeffquestion,answer\r\n" + "".join(f"{q},{a}\r\n" for q, a in cells)).encode())
    assert [(r["question"], r["answer"], r["reference"]) for r in read(file)] == [(q, a, a) for q, a in cells]


@pytest.mark.parametrize("suffix", ["jsonl", "json"])
def test_json_numbers_keep_their_type_and_text(tmp_path, suffix):
    """``datasets`` gave a column of ``3`` and ``2.5`` one type (``3.0``) and refused an integer beyond 64
    bits; each value is now read as written."""
    answers = ["3", "2.50", "1180591620717411303424", '"007"', "1e3", "-0.0"]
    rows = [f'{{"question": "q{i}", "answer": {a}}}' for i, a in enumerate(answers)]
    file = tmp_path / f"train.{suffix}"
    file.write_text("\n".join(rows) + "\n" if suffix == "jsonl" else f"[{', '.join(rows)}]")
    assert [r["reference"] for r in read(file)] == [
        "3",
        "2.50",
        "1180591620717411303424",
        "007",
        "1e3",
        "-0.0",
    ]
    assert [r["answer"] for r in read(file)] == [r["reference"] for r in read(file)]


def test_a_number_is_no_question(tmp_path):
    file = tmp_path / "train.jsonl"
    file.write_text(json.dumps({"question": "1+1", "answer": 2}) + '\n{"question": 2.5, "answer": 2}\n')
    with pytest.raises(DatasetError, match=f"^{file} line 2: field 'question' is missing or empty$"):
        read(file)


@pytest.mark.parametrize(
    "content, expected",
    [
        ("question,answer\n1+1,2\n2+2,\n3+3,6\n", "{file} line 3 field 'answer': no usable answer (got '')"),
        ("question,answer\n1+1,2\n\n2+2\n", "{file} line 4 field 'answer': missing or null"),
        (
            'question,answer\n"two\nlines",2\n2+2,\n',
            "{file} line 4 field 'answer': no usable answer (got '')",
        ),
        (
            "question,answer,extra\nq1,1\nq2,2,3,4\n",
            "dataset file '{file}' line 3 has 4 fields, the header 3",
        ),
        ("question,answer\n", "dataset file '{file}' is empty"),
    ],
    ids=[
        "empty-cell",
        "short-row-after-a-blank-line",
        "after-a-quoted-newline",
        "extra-fields",
        "header-only",
    ],
)
def test_csv_errors_name_the_file_line(tmp_path, content, expected):
    """Lines count from 1 with the header, as in JSON Lines errors (the row index was 0-based and skipped
    the header); a row with extra fields said only "An error occurred while generating the dataset"."""
    file = tmp_path / "train.csv"
    file.write_text(content)
    with pytest.raises(DatasetError) as error:
        read(file)
    assert str(error.value) == expected.format(file=file)


@pytest.mark.parametrize("suffix", ["csv", "jsonl"])
def test_a_file_that_is_not_utf8_names_the_line(tmp_path, suffix):
    file = tmp_path / f"train.{suffix}"
    first = "question,answer\n" if suffix == "csv" else '{"question": "1+1", "answer": "2"}\n'
    file.write_bytes(first.encode() + "caf\u00e9".encode("latin-1") + b",2\n")
    with pytest.raises(DatasetError) as error:
        read(file)
    assert str(error.value) == f"dataset file '{file}' line 2 is not UTF-8 text (invalid continuation byte)"


def test_a_json_boolean_is_no_answer(tmp_path):
    """``true`` would otherwise become the reference ``True``, an answer no verifier matches."""
    file = tmp_path / "train.jsonl"
    file.write_text('{"question": "1+1", "answer": "2"}\n{"question": "Is 2 even?", "answer": true}\n')
    with pytest.raises(DatasetError) as error:
        read(file)
    assert str(error.value) == f"{file} line 2 field 'answer': no usable answer (got True)"


def test_a_boxed_solution_is_kept_whole_as_the_answer_and_shown_whole(tmp_path):
    """The record's ``answer`` is the field as written (the worked solution), its ``reference`` the boxed
    answer; a few-shot example and an SFT target show the whole solution, not the bare reference."""
    solution = "Add the two: 1 + 1 = 2, so the answer is $\\boxed{2}$."
    file = tmp_path / "train.jsonl"
    file.write_text(json.dumps({"question": "1+1", "solution": solution}) + "\n")
    rows = local_file_rows(str(file), "data.train_file")
    [record], skipped = load_records(rows, "question", "solution", "boxed_solution")
    assert skipped == 0
    assert record == {"question": "1+1", "answer": solution, "reference": "2"}
    assert shot_solution(record, "boxed_solution") == solution


def test_an_answer_shown_as_a_box_is_the_reference_without_surrounding_space(tmp_path):
    """A row's answer field ``" 5 "`` is the reference ``5``: the boxed answer shown (few-shot example,
    SFT target) is ``\\boxed{5}``, not the field as written (``\\boxed{ 5 }``)."""
    file = tmp_path / "train.jsonl"
    file.write_text(json.dumps({"question": "2+3", "answer": " 5 "}) + "\n")
    [record] = read(file)
    assert record["reference"] == "5"
    assert shot_solution(record, "answer") == "The final answer is \\boxed{5}."
