"""A real gRPC server and client (grpcio) for the gRPC-through-the-gateway test.

No protoc: messages are raw bytes, methods are registered with grpcio's generic handlers.

  python3 grpc_app.py serve            prints the port, serves until stdin closes
  python3 grpc_app.py call ADDR HOST   calls through ADDR (the gateway) with :authority HOST,
                                       service-token headers from OTPGATE_CLIENT_ID and
                                       OTPGATE_CLIENT_SECRET; prints one JSON object
"""

import json
import os
import sys
from concurrent import futures

import grpc

SERVICE = "otpgate.test.Echo"


def say(request, context):
    md = dict(context.invocation_metadata())
    context.set_trailing_metadata((("x-checksum", "c0ffee"),))
    # What the gateway told the upstream about the caller, and whether a token leaked.
    who = md.get("x-otpgate-user", "")
    leaked = "otpgate-client-secret" in md
    return b"hello " + request + b" from " + who.encode() + (b" LEAKED" if leaked else b"")


def count(request, context):
    for i in range(int(request.decode())):
        yield str(i).encode()
    context.set_trailing_metadata((("x-count", request.decode()),))


def missing(request, context):
    context.abort(grpc.StatusCode.NOT_FOUND, "no such thing: " + request.decode())


def serve():
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    handler = grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "Say": grpc.unary_unary_rpc_method_handler(say),
            "Count": grpc.unary_stream_rpc_method_handler(count),
            "Missing": grpc.unary_unary_rpc_method_handler(missing),
        },
    )
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(port, flush=True)
    sys.stdin.read()
    server.stop(0)


def call(addr, host):
    channel = grpc.insecure_channel(addr, options=(("grpc.default_authority", host),))
    md = (
        ("otpgate-client-id", os.environ["OTPGATE_CLIENT_ID"]),
        ("otpgate-client-secret", os.environ["OTPGATE_CLIENT_SECRET"]),
    )
    out = {}
    say_rpc = channel.unary_unary("/%s/Say" % SERVICE)
    reply, c = say_rpc.with_call(b"grpc", metadata=md, timeout=10)
    out["say"] = {
        "reply": reply.decode(),
        "code": c.code().name,
        "trailers": dict(c.trailing_metadata()),
    }
    count_rpc = channel.unary_stream("/%s/Count" % SERVICE)
    stream = count_rpc(b"3", metadata=md, timeout=10)
    items = [m.decode() for m in stream]
    out["count"] = {
        "items": items,
        "code": stream.code().name,
        "trailers": dict(stream.trailing_metadata()),
    }
    missing_rpc = channel.unary_unary("/%s/Missing" % SERVICE)
    try:
        missing_rpc(b"x", metadata=md, timeout=10)
        out["missing"] = {"code": "OK"}
    except grpc.RpcError as e:
        out["missing"] = {"code": e.code().name, "details": e.details()}
    try:
        say_rpc(b"x", metadata=(("otpgate-client-id", "nobody"),), timeout=10)
        out["no_token"] = {"code": "OK"}
    except grpc.RpcError as e:
        out["no_token"] = {"code": e.code().name}
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        serve()
    else:
        call(sys.argv[2], sys.argv[3])
