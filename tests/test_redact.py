"""Secrets never reach the manifest's record of the command line."""

from adinstruct.builder.redact import redact_command, redact_text


def test_secret_options_and_values_are_redacted():
    argv = [
        "build-dataset", "build", "--api-key", "abc123", "--hf-token=hf_abcdefghijkl",
        "--source", "mvtec=/data/mvtec", "--note", "sk-proj-0123456789abcdef",
    ]  # fmt: skip
    redacted = redact_command(argv)
    assert redacted == [
        "build-dataset", "build", "--api-key", "***", "--hf-token=***",
        "--source", "mvtec=/data/mvtec", "--note", "***",
    ]  # fmt: skip
    assert not any(secret in " ".join(redacted) for secret in ("abc123", "hf_abc", "sk-proj"))


def test_ordinary_text_is_untouched():
    assert (
        redact_text("--source visa=/data/VisA --limit 10") == "--source visa=/data/VisA --limit 10"
    )
    assert redact_command(["--monkey", "banana"]) == ["--monkey", "***"]  # errs on the safe side
