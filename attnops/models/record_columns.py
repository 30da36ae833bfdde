"""Input-side column names of a record frame, without torch: drift checks and the monitor
import these, and only scoring records (`attnops.models.records`) needs a model."""

TEXT_FEATURES = (
    "text_chars",
    "n_tokens",
    "truncated",
    "unk_rate",
    "tokens_per_word",
    "non_letter_share",
)
"""Input-side numeric columns of a record frame."""
