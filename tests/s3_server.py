"""A local S3-compatible server for tests: ``moto_server`` (from ``moto[server]``) on 127.0.0.1.

Everything the tests do with it goes through the real S3 clients (pyarrow's and boto3's) over HTTP:
nothing is patched. ``S3Server.env`` is what a process needs to reach it with the endpoint in the
environment (``AWS_ENDPOINT_URL``); ``uri(path, query=True)`` puts the endpoint in the URI instead.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

BUCKET = "raymmft"
CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "test",
    "AWS_SECRET_ACCESS_KEY": "test",
    "AWS_DEFAULT_REGION": "us-east-1",
    # never ask an EC2 metadata service for credentials or a region (there is none: it would hang)
    "AWS_EC2_METADATA_DISABLED": "true",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _moto_server() -> str:
    found = Path(sys.executable).with_name("moto_server")
    return str(found) if found.exists() else shutil.which("moto_server") or "moto_server"


@dataclass
class S3Server:
    port: int
    process: subprocess.Popen

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def env(self) -> dict[str, str]:
        """Credentials and the endpoint, for processes that find the endpoint in the environment."""
        return {**CREDENTIALS, "AWS_ENDPOINT_URL": self.endpoint, "S3_ENDPOINT": self.endpoint}

    def uri(self, path: str = "", *, query: bool = False) -> str:
        """``s3://raymmft/<path>``, with the endpoint in the query when ``query``."""
        uri = f"s3://{BUCKET}/{path}".rstrip("/")
        if query:
            uri += f"?endpoint_override=127.0.0.1:{self.port}&scheme=http"
        return uri

    def client(self):
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id="test",
            aws_secret_access_key="test",
            region_name="us-east-1",
        )

    def keys(self, prefix: str = "") -> dict[str, str]:
        """``{key: etag}`` of every object under ``prefix``: a snapshot to compare."""
        out, token = {}, None
        while True:
            kwargs = {"Bucket": BUCKET, "Prefix": prefix}
            if token:
                kwargs["ContinuationToken"] = token
            page = self.client().list_objects_v2(**kwargs)
            out.update({o["Key"]: o["ETag"] for o in page.get("Contents", [])})
            if not page.get("IsTruncated"):
                return out
            token = page["NextContinuationToken"]

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()


def start_s3_server(log: Path) -> S3Server:
    """Start ``moto_server`` on a free port, wait until it answers, create the bucket."""
    port = free_port()
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [_moto_server(), "-H", "127.0.0.1", "-p", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, **CREDENTIALS},
        )
    server = S3Server(port, process)
    deadline = time.time() + 30
    while True:
        try:
            server.client().create_bucket(Bucket=BUCKET)
            return server
        except Exception:
            if process.poll() is not None or time.time() > deadline:
                server.stop()
                raise RuntimeError(
                    f"moto_server did not start: {log.read_text()[-2000:]}"
                ) from None
            time.sleep(0.2)
