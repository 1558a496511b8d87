"""The one exception the clients raise for a mistake the user makes (`ClientConfigError`).

Per-request failures are not raised: they come back as a classified
`CompletionResponse.error`. What is raised is a setup the user must change;
a command-line entry point prints its message on one line (no traceback) and
exits with status 2.
"""

from __future__ import annotations


class ClientConfigError(Exception):
    """A client mistake the user can fix (missing API key, bad base URL, bad option); its message is one
    line naming the setting and the fix.

    The batch runner raises it too where it has to stop and the next step is the user's (an unreadable
    batch state file, a Batches API that rejects or keeps failing a call; rerunning resumes)."""


class ClientStopped(ClientConfigError):
    """The client stopped sending before the run was done: the server kept failing for longer than the breaker's
    outage window, or refused every request (bad key, spend cap, a format it does not take). Raised by
    `run_requests` after every response was delivered; its message is one line with the reason, the last server
    message and how many requests were not sent. Rerunning the same command sends those."""

    def __init__(self, message: str, not_sent: int = 0):
        super().__init__(message)
        self.not_sent = not_sent
