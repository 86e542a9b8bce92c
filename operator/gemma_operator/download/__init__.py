"""The model downloader that the download Job runs: ``python -m gemma_operator.download``.

It fetches one model revision from ModelScope or Hugging Face with the hubs' own clients into its stable
directory on the cache volume, verifies it, writes the manifest, and reports progress as JSON lines. The
contract (arguments, environment, exit status, progress lines) is in docs/architecture.md.
"""
