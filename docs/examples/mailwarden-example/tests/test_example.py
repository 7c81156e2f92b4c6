"""The template plugin through the real pipeline, with mailwarden's test harness."""

from mailwarden_example import RiskyAttachmentDetector

from mailwarden.testing import build_message, expect_action, expect_finding, no_finding, scan


def test_executable_behind_a_document_name_is_scored() -> None:
    raw = build_message(attachments=[("invoice.pdf.exe", b"MZ\x90\x00")])
    decision = scan(raw, plugins=[RiskyAttachmentDetector])
    finding = expect_finding(decision, "EXAMPLE_RISKY_ATTACHMENT", filename="invoice.pdf.exe")
    assert finding.score == 6.0


def test_plain_documents_pass() -> None:
    decision = scan(
        build_message(attachments=[("invoice.pdf", b"%PDF-1.7")]), plugins=[RiskyAttachmentDetector]
    )
    no_finding(decision, "EXAMPLE_RISKY_ATTACHMENT")
    expect_action(decision, "deliver")


def test_score_and_extensions_come_from_the_config() -> None:
    raw = build_message(attachments=[("macro.docm", b"PK\x03\x04")])
    config = '[example]\nextensions = [".docm"]\nscore = 12.0\n'
    decision = scan(raw, plugins=[RiskyAttachmentDetector], builtins=True, config=config)
    expect_finding(decision, "EXAMPLE_RISKY_ATTACHMENT")
    expect_action(decision, "reject")  # 12 >= the antispam spam threshold (10) -> spam -> reject
