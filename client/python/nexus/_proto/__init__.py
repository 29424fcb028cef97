# SPDX-License-Identifier: Apache-2.0
"""Protobuf classes generated from proto/*.proto by protoc (client/python/gen_proto.py), shipped
with the package so that nothing runs protoc at run time. Do not edit the *_pb2.py files:
regenerate them. They need the protobuf runtime 3.20 or later (Debian 12: python3-protobuf)."""

from . import common_pb2, nexus_pb2  # noqa: F401

__all__ = ["common_pb2", "nexus_pb2"]
