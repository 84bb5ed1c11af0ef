// workers web: the pages users see, rendered from what auth and api answer.
//
//   GET  /         the products (api), who is signed in (auth), their purchases (api)
//   POST /signup, /login   forms {email, password}; the session token lives in a cookie
//   POST /buy      form {product_id}: buys it through api
//   GET  /health   {status, service, commit, release, database}; 503 without its database
//
// Bindings: DATABASE_URL (checked by /health), AUTH_URL and API_URL (the base URLs of
// this environment's auth and api), AUTH_HOST and API_HOST (their host names: locally
// branchline gives its edge's URL and each service's host name, and the edge routes by
// Host). Unset or down, the page says "auth unavailable".
import pg from "pg";

const SERVICE = "web";
const COOKIE = "workers_session";

class Unavailable extends Error {}

async function health(env) {
  const body = {
    status: "ok",
    service: SERVICE,
    commit: env.BRANCHLINE_COMMIT || "dev",
    release: env.BRANCHLINE_RELEASE || "dev",
    database: "ok",
  };
  const client = new pg.Client({ connectionString: env.DATABASE_URL, connectionTimeoutMillis: 5000 });
  try {
    await client.connect();
    await client.query("SELECT 1");
  } catch (error) {
    const why = String(error.message || error.code || error).split("\n")[0];
    return Response.json({ ...body, status: "error", database: why }, { status: 503 });
  } finally {
    await client.end().catch(() => {});
  }
  return Response.json(body);
}

// [status, JSON answer] of `method path` on auth or api.
export async function call(env, service, method, path, { body, token } = {}) {
  const key = service.toUpperCase();
  const base = (env[`${key}_URL`] || "").replace(/\/+$/, "");
  if (!/^https?:\/\//.test(base)) throw new Unavailable(`${service} unavailable (${key}_URL is not set)`);
  const headers = { "Content-Type": "application/json" };
  if (token) headers.Authorization = `Bearer ${token}`;
  const data = body === undefined ? undefined : JSON.stringify(body);
  let answer;
  try {
    // The Host to send differs from the URL's only behind an edge reached by address
    // (branchline's locally); on Cloudflare the URL is the host's own (https).
    const host = env[`${key}_HOST`];
    const direct = !host || new URL(base).hostname === host;
    answer = !direct
      ? await fetchWithHost(base + path, host, { method, headers, body: data })
      : await fetch(base + path, { method, headers, body: data });
  } catch {
    throw new Unavailable(`${service} unavailable`);
  }
  if (answer.status >= 500) throw new Unavailable(`${service} unavailable (${answer.status})`);
  return [answer.status, await answer.json().catch(() => null)];
}

// `fetch`, but with `host` as the Host header: a Worker's fetch() never sends the Host
// it is given (it sends the URL's), and branchline's edge routes by Host. So: one
// HTTP/1.1 exchange over a TCP socket (cloudflare:sockets, as pg's own connections),
// `Connection: close`, the answer read to its end.
export async function fetchWithHost(url, host, { method = "GET", headers = {}, body } = {}) {
  const { connect } = await import("cloudflare:sockets");
  const target = new URL(url);
  const payload = new TextEncoder().encode(body ?? "");
  const lines = [`${method} ${target.pathname}${target.search} HTTP/1.1`, `Host: ${host}`,
    "Connection: close", `Content-Length: ${payload.length}`];
  for (const [name, value] of Object.entries(headers)) lines.push(`${name}: ${value}`);
  const socket = connect({ hostname: target.hostname, port: Number(target.port || 80) });
  const writer = socket.writable.getWriter();
  await writer.write(new TextEncoder().encode(`${lines.join("\r\n")}\r\n\r\n`));
  if (payload.length) await writer.write(payload);
  const raw = new Uint8Array(await new Response(socket.readable).arrayBuffer());
  await socket.close().catch(() => {});
  const line = (from) => raw.findIndex((b, i) => i >= from && b === 13 && raw[i + 1] === 10);
  const head = [];
  let at = 0;
  for (let end = line(at); end > at; at = end + 2, end = line(at)) {
    head.push(new TextDecoder().decode(raw.subarray(at, end)));
  }
  const status = Number((head[0] || "").split(" ")[1]) || 502;
  let content = raw.subarray(at + 2);
  if (head.some((h) => /^transfer-encoding:\s*chunked/i.test(h))) {
    const chunks = [];
    for (let pos = at + 2, end = line(pos); end >= 0; end = line(pos)) {
      const size = parseInt(new TextDecoder().decode(raw.subarray(pos, end)), 16);
      if (!size) break;
      chunks.push(raw.subarray(end + 2, end + 2 + size));
      pos = end + 2 + size + 2;
    }
    content = new Uint8Array(await new Blob(chunks).arrayBuffer());
  }
  return new Response(status === 204 || status === 304 ? null : content, { status });
}

const escape = (text) =>
  String(text).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
const money = (cents) => `$${(cents / 100).toFixed(2)}`;

export function page(title, content, { user = null, notices = [] } = {}) {
  const who = user ? `Signed in as <b>${escape(user.email)}</b>` : "Not signed in";
  const alerts = notices.map((n) => `<p class="notice">${escape(n)}</p>`).join("");
  return new Response(
    `<!doctype html><html><head><meta charset="utf-8"><title>${escape(title)} · workers</title></head>` +
      `<body><header><a href="/">workers</a> · ${who}</header><h1>${escape(title)}</h1>${alerts}${content}</body></html>`,
    { headers: { "Content-Type": "text/html; charset=utf-8" } },
  );
}

function sessionToken(request) {
  for (const pair of (request.headers.get("Cookie") || "").split(";")) {
    const [name, value] = pair.trim().split("=");
    if (name === COOKIE && value) return value;
  }
  return null;
}

const FORMS =
  '<form method="post" action="/signup"><input name="email"><input name="password" type="password">' +
  '<button>Sign up</button></form> <form method="post" action="/login"><input name="email">' +
  '<input name="password" type="password"><button>Log in</button></form>';

async function home(request, env) {
  const token = sessionToken(request);
  const notices = [];
  let user = null;
  let products = [];
  let bought = [];
  try {
    if (token) {
      const [status, answer] = await call(env, "auth", "GET", "/me", { token });
      if (status === 200) user = answer;
    }
  } catch (error) {
    if (!(error instanceof Unavailable)) throw error;
    notices.push(error.message);
  }
  try {
    products = (await call(env, "api", "GET", "/products"))[1] || [];
    if (user) bought = (await call(env, "api", "GET", "/purchases", { token }))[1] || [];
  } catch (error) {
    if (!(error instanceof Unavailable)) throw error;
    notices.push(error.message);
  }
  const rows = products.map(
    (p) =>
      `<tr><td>${escape(p.name)}</td><td>${money(p.price_cents)}</td><td>` +
      (user
        ? `<form method="post" action="/buy"><input type="hidden" name="product_id" value="${Number(p.id)}"><button>Buy</button></form>`
        : "") +
      "</td></tr>",
  );
  const purchases = user
    ? `<h2>Your purchases</h2><ul>${bought.map((b) => `<li>#${b.id} ${escape(b.product)} ${money(b.amount_cents)}</li>`).join("") || "<li>none yet</li>"}</ul>`
    : FORMS;
  return page("Products", `<table>${rows.join("")}</table>${purchases}`, { user, notices });
}

function signedIn(token) {
  return new Response(null, {
    status: 303,
    headers: { Location: "/", "Set-Cookie": `${COOKIE}=${token}; Path=/; HttpOnly; SameSite=Lax` },
  });
}

function account(path) {
  return async (request, env) => {
    const form = await request.formData();
    const body = { email: form.get("email") || "", password: form.get("password") || "" };
    const [status, answer] = await call(env, "auth", "POST", path, { body });
    if (status === 200 || status === 201) return signedIn(answer.token);
    return page("Sign in", FORMS, { notices: [answer?.error || `auth said ${status}`] });
  };
}

async function buy(request, env) {
  const token = sessionToken(request);
  const form = await request.formData();
  const body = { product_id: Number(form.get("product_id")) };
  const [status, answer] = await call(env, "api", "POST", "/purchases", { body, token });
  if (status === 201) return new Response(null, { status: 303, headers: { Location: "/" } });
  return page("Not bought", "", { notices: [answer?.error || `api said ${status}`] });
}

const ROUTES = {
  "GET /health": (request, env) => health(env),
  "GET /": home,
  "POST /signup": account("/signup"),
  "POST /login": account("/login"),
  "POST /buy": buy,
};

export default {
  async fetch(request, env) {
    const url = new URL(request.url);
    const route = ROUTES[`${request.method} ${url.pathname}`];
    if (!route) return new Response("not found", { status: 404 });
    try {
      return await route(request, env);
    } catch (error) {
      if (error instanceof Unavailable) return page("Unavailable", "", { notices: [error.message] });
      console.error(`${SERVICE}: ${request.method} ${url.pathname}: ${error.stack || error}`);
      return new Response("internal error", { status: 500 });
    }
  },
};
