import assert from "node:assert/strict";
import { dlopenLazily } from "../../native/lazy_dlopen.ts";

Deno.test("a lazily opened library binds each symbol on first use and refuses a missing library at once", () => {
  const libc = dlopenLazily("libc.so.6", {
    getpid: { parameters: [], result: "i32" },
    no_such_symbol_in_libc: { parameters: [], result: "i32" },
  });
  assert.equal(libc.getpid(), Deno.pid);
  assert.equal(libc.getpid, libc.getpid, "bound once");
  // An unknown name fails where it is first used, not where the library is opened.
  assert.throws(() => libc.no_such_symbol_in_libc());
  assert.throws(() => dlopenLazily("/nonexistent/libnothing.so", {}));
});
