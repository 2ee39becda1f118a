"""Hugging Face Hub ids: config first (to refuse unsupported models before gigabytes move), then the snapshot.

Downloads go to the standard HF cache (HF_HOME / HF_HUB_CACHE) and honour HF_HUB_OFFLINE, so a cached model
builds with no network.
"""

from __future__ import annotations

from pathlib import Path

from phiexport.architectures import architecture_for
from phiexport.errors import SourceError
from phiexport.source.hf_dir import PICKLE_SUFFIXES, read_json

_FILES = ["*.json", "*.safetensors", "tokenizer.model", "*.jinja", "*.txt", "*.tiktoken"]


def download_snapshot(repo_id: str, revision: str | None, *, allow_pickle: bool) -> tuple[Path, str]:
    """The local snapshot directory of `repo_id` at `revision` and the commit it resolved to.

    Without network and without HF_HUB_OFFLINE, a half-open connection can hang inside huggingface_hub (it sets
    no timeout on the revision lookup); HF_HUB_OFFLINE=1 is the reliable way to build from the cache only.
    """
    from huggingface_hub import is_offline_mode, snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    where = f"{repo_id}@{revision or 'main'}"
    patterns = _FILES + ([f"*{suffix}" for suffix in PICKLE_SUFFIXES] if allow_pickle else [])
    try:
        config_dir = Path(snapshot_download(repo_id, revision=revision, allow_patterns=["config.json"]))
        architecture_for(read_json(config_dir / "config.json"))
        snapshot = Path(snapshot_download(repo_id, revision=revision, allow_patterns=patterns))
    except LocalEntryNotFoundError as exc:  # every "not cached and not downloadable" case, offline or not
        if is_offline_mode():
            raise SourceError(
                f"{where} is not in the local Hugging Face cache and HF_HUB_OFFLINE is set",
                "download it once with network access, or unset HF_HUB_OFFLINE",
            ) from None
        raise SourceError(
            f"cannot reach the Hugging Face Hub for {where} and it is not cached ({type(exc).__name__})",
            "check the network, or set HF_HUB_OFFLINE=1 to use the local cache only",
        ) from None
    except RevisionNotFoundError:
        raise SourceError(f"{repo_id} has no revision {revision!r}", "pass an existing branch, tag or commit") from None
    except GatedRepoError:
        raise SourceError(f"{repo_id} is gated", "accept its licence on the Hub and log in (hf auth login)") from None
    except RepositoryNotFoundError:
        raise SourceError(f"no Hub repository {repo_id}", "check the id, or pass a local directory") from None
    except HfHubHTTPError as exc:
        raise SourceError(f"the Hub refused {where}: {exc}", "check the id and your token") from None
    return snapshot, snapshot.name
