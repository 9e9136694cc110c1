// A proxy-wasm filter written with the spec's AssemblyScript SDK, as a filter author
// would write one for Envoy: it adds a request header carrying its configuration and the
// request path, answers 401 itself when asked to, counts requests in a metric, and adds a
// response header.
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
} from "@solo-io/proxy-runtime";
import { get_property } from "@solo-io/proxy-runtime/runtime";

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
    return FilterHeadersStatusValues.Continue;
  }

  onResponseHeaders(a: u32, end_of_stream: bool): FilterHeadersStatusValues {
    stream_context.headers.response.add("x-as-response", "1");
    return FilterHeadersStatusValues.Continue;
  }
}

registerRootContext((context_id: u32) => {
  return new GatehouseRoot(context_id);
}, "gatehouse_test");
