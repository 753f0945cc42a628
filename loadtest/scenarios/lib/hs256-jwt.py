"""Prints an HS256 JWT for the bench and training scripts' JWT routes.

Usage: SECRET=<shared secret> python3 hs256-jwt.py <subject>
The secret comes by environment, not on a command line other users can read.
The token expires in a day.
"""
import base64
import hashlib
import hmac
import json
import os
import sys
import time


def b64url(data: bytes) -> bytes:
    return base64.urlsafe_b64encode(data).rstrip(b"=")


head = b64url(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
body = b64url(json.dumps({"sub": sys.argv[1], "exp": int(time.time()) + 86400}).encode())
sig = b64url(hmac.new(os.environ["SECRET"].encode(), head + b"." + body, hashlib.sha256).digest())
print((head + b"." + body + b"." + sig).decode())
