"""Is a W&B server usable from here: credentials for it, and an answer from it within a bound. Standard library
only, so that the study side (``ssl-bench dashboard``) and training share it without loading either's packages."""

from __future__ import annotations

import netrc
import os
import ssl
import threading
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit


def wandb_has_credentials(base_url: str) -> bool:
    """Whether W&B would find credentials for ``base_url`` without prompting: an API key or identity token in the
    environment, or an entry for the server's host in the netrc file (``NETRC``, else ``~/.netrc``)."""
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return True
    path = Path(os.environ.get("NETRC") or "~/.netrc").expanduser()
    try:
        entry = netrc.netrc(str(path)).authenticators(urlsplit(base_url).netloc)
    except (OSError, netrc.NetrcParseError):
        return False
    return entry is not None and bool(entry[2])


def wandb_answers(base_url: str, timeout: float) -> str | None:
    """None when the server at ``base_url`` answers an HTTP request within ``timeout`` seconds (any status, or a
    TLS error, counts as an answer); otherwise why not. Name resolution is bounded too: the request runs in a
    daemon thread that is waited for at most ``timeout`` seconds."""
    silent = f"W&B at {base_url} did not answer within {timeout:g} s (logger.init_timeout)"
    outcome: list[str | None] = []

    def request() -> None:
        try:
            urllib.request.urlopen(urllib.request.Request(base_url, method="HEAD"), timeout=timeout).close()
            outcome.append(None)
        except urllib.error.HTTPError:  # an error status is an answer
            outcome.append(None)
        except urllib.error.URLError as err:
            reason = err.reason
            if isinstance(reason, ssl.SSLError):  # so is a TLS failure: wandb's own request will say more
                outcome.append(None)
            elif isinstance(reason, TimeoutError):
                outcome.append(silent)
            else:
                why = reason.strerror if isinstance(reason, OSError) and reason.strerror else reason
                outcome.append(f"cannot reach W&B at {base_url} ({why})")
        except TimeoutError:
            outcome.append(silent)
        except (OSError, ValueError) as err:
            outcome.append(f"cannot reach W&B at {base_url} ({err})")

    thread = threading.Thread(target=request, name="wandb-reachability", daemon=True)
    thread.start()
    thread.join(timeout)
    return outcome[0] if outcome else silent
