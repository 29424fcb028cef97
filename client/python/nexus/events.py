# SPDX-License-Identifier: Apache-2.0
"""Events as the client hands them out (Event, Gap), and the conversions between Python values
and the wire's messages: a dict <-> google.protobuf.Struct (common.Payload.data), the metadata,
event-type helpers and subscription pattern matching (docs/PROTOCOL.md)."""

from google.protobuf import json_format

from ._proto import common_pb2

# The states that end a request (docs/PROTOCOL.md, "Requests and their lifecycle").
TERMINAL_STATES = ("success", "failed", "cancelled", "timeout")


def to_python(value):
    """A Struct / ListValue / Value as plain Python: integral numbers below 2**53 as int (a
    Struct holds only doubles, so 3 arrives as 3.0)."""

    def fix(v):
        if isinstance(v, float) and v.is_integer() and abs(v) < 2**53:
            return int(v)
        if isinstance(v, dict):
            return {k: fix(x) for k, x in v.items()}
        if isinstance(v, list):
            return [fix(x) for x in v]
        return v

    return fix(json_format.MessageToDict(value))


def as_data(value):
    """What a handler returns or streams, as a payload data dict: a dict stays itself, None is
    no payload, anything else JSON-like is wrapped as {"result": value}."""
    if value is None or isinstance(value, dict):
        return value
    return {"result": value}


def build_payload(data=None, versioning=None):
    """A common.Payload from dicts (None: field left out); None when both are None."""
    if data is None and versioning is None:
        return None
    p = common_pb2.Payload()
    if data is not None:
        p.data.SetInParent()
        p.data.update(data)
    if versioning is not None:
        p.versioning.SetInParent()
        p.versioning.update(versioning)
    return p


def build_metadata(metadata=None, user_id=None, correlation_id=None, tags=None):
    """A common.Metadata from a Metadata message or its JSON form as a dict (docs/PROTOCOL.md),
    with global_context.user_id / correlation_id and tags set when given. None when empty."""
    if isinstance(metadata, common_pb2.Metadata):
        md = common_pb2.Metadata()
        md.CopyFrom(metadata)
    elif metadata:
        md = json_format.ParseDict(metadata, common_pb2.Metadata())
    else:
        md = common_pb2.Metadata()
    if user_id:
        md.global_context.user_id = user_id
    if correlation_id:
        md.global_context.correlation_id = correlation_id
    if tags:
        md.tags.extend(tags)
    return md if md.ByteSize() else None


def split_type(event_type):
    """"svc:act:v1:state" -> ("svc:act:v1", "state"); a type without state -> (type, "")."""
    head, _, state = event_type.rpartition(":")
    return (head, state) if head.count(":") == 2 else (event_type, "")


def request_type(action):
    """A request's event type from "service:action:vN" or "service:action:vN:requested"."""
    parts = action.split(":")
    if len(parts) == 3:
        return action + ":requested"
    if len(parts) == 4 and parts[3] == "requested":
        return action
    raise ValueError("%r: expected service:action:vN (or with :requested)" % action)


def pattern_matches(patterns, event_type):
    """True if event_type matches one of the subscription patterns (none, or "*": every type;
    otherwise four segments, each a literal or *)."""
    if not patterns:
        return True
    seg = event_type.split(":")
    for p in patterns:
        if p == "*":
            return True
        ps = p.split(":")
        if len(ps) == len(seg) and all(a == "*" or a == b for a, b in zip(ps, seg)):
            return True
    return False


class Event:
    """A delivered event, an acknowledgement or a request's lifecycle event: a read-only view
    of the wire's EventResponse (raw), with the payload's data as a dict."""

    __slots__ = ("raw", "_data")

    def __init__(self, raw):
        self.raw = raw
        self._data = None

    event_id = property(lambda self: self.raw.event_id)
    event_type = property(lambda self: self.raw.event_type)
    campaign_id = property(lambda self: self.raw.campaign_id)
    sequence = property(lambda self: self.raw.sequence)
    timestamp_unix_nanos = property(lambda self: self.raw.timestamp_unix_nanos)
    correlation_id = property(lambda self: self.raw.correlation_id)
    stream_seq = property(lambda self: self.raw.stream_seq)
    code = property(lambda self: self.raw.code)
    entity_id = property(lambda self: self.raw.entity_id)
    message = property(lambda self: self.raw.message)
    success = property(lambda self: self.raw.success)
    metadata = property(lambda self: self.raw.metadata)
    user_id = property(lambda self: self.raw.metadata.global_context.user_id)

    @property
    def state(self):
        """The last segment of the type: requested, started, stream, success, ..."""
        return split_type(self.raw.event_type)[1]

    @property
    def action(self):
        """The type without its state: service:action:vN."""
        return split_type(self.raw.event_type)[0]

    @property
    def terminal(self):
        return self.state in TERMINAL_STATES

    @property
    def has_payload(self):
        return self.raw.HasField("payload")

    @property
    def data(self):
        """Payload.data as a dict ({} when absent)."""
        if self._data is None:
            p = self.raw.payload
            self._data = to_python(p.data) if p.HasField("data") else {}
        return self._data

    @property
    def versioning(self):
        p = self.raw.payload
        return to_python(p.versioning) if p.HasField("versioning") else {}

    def to_dict(self):
        """The event as JSON-ready dict, with the fields nexusctl prints (empty ones left out)."""
        d = {"event_id": self.event_id, "event_type": self.event_type,
             "campaign_id": self.campaign_id, "sequence": self.sequence,
             "timestamp_unix_nanos": self.timestamp_unix_nanos}
        for k in ("correlation_id", "stream_seq", "code", "entity_id", "message"):
            v = getattr(self, k)
            if v:
                d[k] = v
        if self.has_payload:
            d["payload"] = {"data": self.data}
            if self.raw.payload.HasField("versioning"):
                d["payload"]["versioning"] = self.versioning
        if self.raw.HasField("metadata"):
            d["metadata"] = to_python(self.raw.metadata)
        return d

    def __repr__(self):
        return "Event(%s campaign=%d seq=%d id=%s%s)" % (
            self.event_type, self.campaign_id, self.sequence, self.event_id,
            " data=%r" % (self.data,) if self.has_payload else "")


class Gap:
    """Events of a campaign this subscription did not get. reason: "slow_consumer" or
    "retention" (from the broker, docs/PROTOCOL.md), "client_queue_full" (the subscription's
    local queue was full: the program did not read fast enough), "reconnect" (the connection
    was lost and the subscription made anew; last_sequence 0: unknown)."""

    __slots__ = ("campaign_id", "first_sequence", "last_sequence", "dropped", "reason")

    def __init__(self, campaign_id, first_sequence, last_sequence, dropped, reason):
        self.campaign_id = campaign_id
        self.first_sequence = first_sequence
        self.last_sequence = last_sequence
        self.dropped = dropped
        self.reason = reason

    @classmethod
    def from_wire(cls, g):
        return cls(g.campaign_id, g.first_sequence, g.last_sequence, g.dropped, g.reason)

    def __repr__(self):
        return "Gap(campaign=%d %d..%d dropped=%d reason=%s)" % (
            self.campaign_id, self.first_sequence, self.last_sequence, self.dropped, self.reason)
