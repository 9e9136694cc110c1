// A proxy-wasm filter written with the spec's AssemblyScript SDK, as a filter author
// would write one for Envoy: it adds a request header carrying its configuration and the
// request path, answers 401 itself when asked to, counts requests in a metric, and adds a
// response header. With `x-as-call` it asks the `authz` upstream first (an http call) and
// passes its answer on, or refuses with 403; it reads whole request bodies and refuses
// one that says "forbidden".
export * from "@solo-io/proxy-runtime/proxy";
import {
  RootContext,
  Context,
  registerRootContext,
  FilterHeadersStatusValues,
  stream_context,
  send_local_response,
  GrpcStatusValues,
  Counter,
  FilterDataStatusValues,
  HeaderPair,
  Headers,
  continue_request,
} from "@solo-io/proxy-runtime";
import { get_property, get_buffer_bytes, BufferTypeValues } from "@solo-io/proxy-runtime/runtime";

function pair(k: string, v: string): HeaderPair {
  return new HeaderPair(String.UTF8.encode(k), String.UTF8.encode(v));
}

// The answer of the `authz` call: its body goes upstream as x-authz, anything but 200 is a 403.
function authzAnswered(origin: Context, headers: u32, body_size: usize, trailers: u32): void {
  if (stream_context.headers.http_callback.get(":status") != "200") {
    send_local_response(403, "authz", String.UTF8.encode("refused by authz"), [], GrpcStatusValues.PermissionDenied);
    return;
  }
  const verdict = String.UTF8.decode(get_buffer_bytes(BufferTypeValues.HttpCallResponseBody, 0, body_size as u32));
  stream_context.headers.request.add("x-authz", verdict);
  continue_request();
}

class GatehouseRoot extends RootContext {
  requests: Counter = new Counter("requests");

  createContext(context_id: u32): Context {
    return new GatehouseFilter(context_id, this);
  }
}

class GatehouseFilter extends Context {
  root: GatehouseRoot;

  constructor(context_id: u32, root_context: GatehouseRoot) {
    super(context_id, root_context);
    this.root = root_context;
  }

  onRequestHeaders(a: u32, end_of_stream: bool): FilterHeadersStatusValues {
    this.root.requests.increment(1);
    if (stream_context.headers.request.get("x-as-deny") != "") {
      send_local_response(401, "denied", String.UTF8.encode("denied by assemblyscript"), [], GrpcStatusValues.Unauthenticated);
      return FilterHeadersStatusValues.StopIteration;
    }
    stream_context.headers.request.add("x-from-assemblyscript", this.root.getConfiguration());
    const path = String.UTF8.decode(get_property("request\0path"));
    stream_context.headers.request.add("x-as-path", path);
    const who = stream_context.headers.request.get("x-as-call");
    if (who != "") {
      const headers: Headers = [pair(":method", "GET"), pair(":path", "/check?user=" + who), pair(":authority", "authz.internal")];
      this.root.httpCall("authz", headers, new ArrayBuffer(0), [], 2000, this, authzAnswered);
      return FilterHeadersStatusValues.StopIteration;
    }
    return FilterHeadersStatusValues.Continue;
  }

  onRequestBody(body_buffer_length: usize, end_of_stream: bool): FilterDataStatusValues {
    if (!end_of_stream) {
      return FilterDataStatusValues.StopIterationAndBuffer;
    }
    const body = String.UTF8.decode(get_buffer_bytes(BufferTypeValues.HttpRequestBody, 0, body_buffer_length as u32));
    if (body.includes("forbidden")) {
      send_local_response(403, "body", String.UTF8.encode("refused by body"), [], GrpcStatusValues.PermissionDenied);
      return FilterDataStatusValues.StopIterationNoBuffer;
    }
    return FilterDataStatusValues.Continue;
  }

  onResponseHeaders(a: u32, end_of_stream: bool): FilterHeadersStatusValues {
    stream_context.headers.response.add("x-as-response", "1");
    return FilterHeadersStatusValues.Continue;
  }
}

registerRootContext((context_id: u32) => {
  return new GatehouseRoot(context_id);
}, "gatehouse_test");
