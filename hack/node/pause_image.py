"""Writes the real node's pod sandbox image: an OCI image archive holding one static binary.

    python3 pause_image.py BINARY IMAGE_NAME OUT.tar

No registry can be reached, so registry.k8s.io/pause cannot be pulled; this image (built from
hack/node/pause.c) is imported into the node's containerd and named as its sandbox_image. The archive
is byte-for-byte reproducible (fixed timestamps and owners), so an unchanged binary gives the same
image digest and the node can skip the import. Standard library only.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import sys
import tarfile
from pathlib import Path


def _tar_bytes(members: list[tuple[str, bytes, int]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data, mode in members:
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime, info.uid, info.gid = len(data), mode, 0, 0, 0
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _blob(data: bytes) -> tuple[str, bytes]:
    return "sha256:" + hashlib.sha256(data).hexdigest(), data


def build(binary: Path, name: str) -> bytes:
    layer_tar = _tar_bytes([("pause", binary.read_bytes(), 0o755)])
    layer_gz = gzip.compress(layer_tar, mtime=0)
    config = {
        "architecture": "amd64",
        "os": "linux",
        "config": {"Entrypoint": ["/pause"], "User": "65535:65535"},
        "rootfs": {"type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(layer_tar).hexdigest()]},
    }
    config_digest, config_bytes = _blob(json.dumps(config, sort_keys=True).encode())
    layer_digest, _ = _blob(layer_gz)
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest,
                   "size": len(config_bytes)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": layer_digest,
                    "size": len(layer_gz)}],
    }
    manifest_digest, manifest_bytes = _blob(json.dumps(manifest, sort_keys=True).encode())
    index = {
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": manifest_digest,
            "size": len(manifest_bytes),
            # containerd names the imported image after this annotation.
            "annotations": {"io.containerd.image.name": name, "org.opencontainers.image.ref.name": name},
        }],
    }
    blobs = [(d, b) for d, b in ((config_digest, config_bytes), (layer_digest, layer_gz),
                                 (manifest_digest, manifest_bytes))]
    members = [("oci-layout", b'{"imageLayoutVersion":"1.0.0"}', 0o644),
               ("index.json", json.dumps(index, sort_keys=True).encode(), 0o644)]
    members += [(f"blobs/sha256/{d.split(':', 1)[1]}", b, 0o644) for d, b in blobs]
    return _tar_bytes(members)


def main() -> None:
    binary, name, out = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
    out.write_bytes(build(binary, name))


if __name__ == "__main__":
    main()
