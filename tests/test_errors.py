"""One-line summaries of errors, for messages and tables whose tracebacks go elsewhere."""

from __future__ import annotations

from pcpretrain.errors import compile_failure_message, error_summary


def test_an_error_is_summed_up_by_its_type_and_the_first_line_of_its_message() -> None:
    assert error_summary(RuntimeError("CUDA out of memory.\nTried to allocate 2 GiB")) == (
        "RuntimeError: CUDA out of memory."
    )
    assert error_summary(KeyError()) == "KeyError"
    assert error_summary(ValueError("  \n")) == "ValueError"


def test_a_compile_failure_names_the_cause_on_one_bounded_line_and_the_remedy() -> None:
    message = compile_failure_message("the model", RuntimeError("a\n  b " + "x" * 400), "set it off")
    assert message.startswith("torch.compile could not compile the model (a b xxx")
    assert message.endswith("); set it off")
    assert "\n" not in message and len(message) < 360
    assert "(RuntimeError)" in compile_failure_message("it", RuntimeError(), "r")
