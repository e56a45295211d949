"""Per-message CPU cost of the codec: what ``delay()`` spends before its round trip,
what a worker spends reading a message, and what signing and encryption add.

Usage: .venv/bin/python -m bench.codec [--number 20000] [--repeat 7]

Prints microseconds per message (the best of ``--repeat`` timeit runs of
``--number`` calls, so other load on the machine inflates figures less); not a
test. No server is needed: publishing is not timed, only the Python around it.

Rows:
  prepare          Producer.prepare: build, encode (and seal) a call: delay() minus
                   the publish
  payload          the broker's envelope JSON for it (what LPUSH sends on Redis)
  read             decode_payload (+ open the seal) + message.decode: what the worker
                   does per message
  result           a result's encode and decode in the backend
Each row runs plain, signed (security_keys) and encrypted (security_encrypt).
  rsa-2048         for comparison: one RSA-2048 signature and its verification of the
                   same bytes (what a certificate-based scheme, such as Celery's auth
                   serializer, spends per message)
"""

from __future__ import annotations

import argparse
import importlib.util
import timeit
from collections.abc import Callable
from typing import Any

from taskq import App, message
from taskq.broker.envelope import decode_payload, encode_payload


def best(fn: Callable[[], Any], number: int, repeat: int) -> float:
    """Microseconds per call: the fastest of ``repeat`` runs."""
    return min(timeit.repeat(fn, number=number, repeat=repeat)) / number * 1e6


def codec_rows(app: App, number: int, repeat: int, label: str) -> None:
    @app.task(name="bench.add")
    def add(x: int, y: int) -> int:
        return x + y

    def prepare() -> Any:
        return app.producer.prepare("bench.add", (2, 2), None, {}, task=add)

    security = getattr(app, "security", None)
    sealer = getattr(security, "sealer", None)
    opened = sealer.open if sealer is not None else (lambda env: env)
    envelope = prepare().envelope  # sealed when the app has keys
    payload = encode_payload(envelope, "celery", 0)
    accept = app.conf.accept_content

    def read() -> message.TaskMessage:
        return message.decode(opened(decode_payload(payload)), accept)

    rows = {
        "prepare": lambda: prepare().envelope,  # seals it when the app has keys
        "payload": lambda: encode_payload(envelope, "celery", 0),
        "read": read,
    }
    for name, fn in rows.items():
        print(f"{label:<10} {name:<8} {best(fn, number, repeat):7.2f} us")
    backend = app.backend
    if backend is not None:
        meta = {"status": "SUCCESS", "result": 4, "traceback": None, "children": [],
                "date_done": "2026-01-01T00:00:00+00:00", "task_id": "x" * 36}  # fmt: skip
        data = backend.encode(meta)
        print(f"{label:<10} {'result':<8} {best(lambda: backend.decode(backend.encode(meta)), number, repeat):7.2f} us"
              f"  ({len(data)} bytes stored)")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--number", type=int, default=20000)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    modes: list[tuple[str, dict[str, Any]]] = [("plain", {})]
    if importlib.util.find_spec("taskq.security") is not None:
        keys = {"security_keys": {"k1": "0123456789abcdef0123456789abcdef"}}
        modes.append(("signed", keys))
        if importlib.util.find_spec("cryptography") is not None:
            modes.append(("encrypted", {**keys, "security_encrypt": True}))
    for label, settings in modes:
        app = App("bench", broker="redis://127.0.0.1:1/0", backend="memory://", **settings)
        codec_rows(app, args.number, args.repeat, label)
    if importlib.util.find_spec("cryptography") is not None:
        rsa_row(args.number // 20 or 1, args.repeat)


def rsa_row(number: int, repeat: int) -> None:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding, rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    data = b"x" * 400  # about a task message
    signature = key.sign(data, padding.PKCS1v15(), hashes.SHA256())
    public = key.public_key()
    sign = best(lambda: key.sign(data, padding.PKCS1v15(), hashes.SHA256()), number, repeat)
    verify = best(
        lambda: public.verify(signature, data, padding.PKCS1v15(), hashes.SHA256()), number, repeat
    )
    print(f"{'rsa-2048':<10} {'sign':<8} {sign:7.2f} us")
    print(f"{'rsa-2048':<10} {'verify':<8} {verify:7.2f} us")


if __name__ == "__main__":
    main()
