// The three Workers in-process on a migrated database (DATABASE_URL): web driven as a
// browser would, its calls to auth and api answered by their own fetch handlers (by the
// URL's host). Skipped without DATABASE_URL.
import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { test } from "node:test";
import pg from "pg";
import api from "../services/api/src/index.js";
import auth from "../services/auth/src/index.js";
import web from "../services/web/src/index.js";

const url = process.env.DATABASE_URL;
const skip = url ? false : "needs DATABASE_URL (a migrated database)";
const env = {
  DATABASE_URL: url,
  AUTH_SECRET: "integration-secret",
  AUTH_URL: "http://auth.test",
  API_URL: "http://api.test",
  BRANCHLINE_COMMIT: "0123456789abcdef",
};
const WORKERS = { "auth.test": auth, "api.test": api };

// What web's fetch() reaches: the Worker its URL names.
globalThis.fetch = async (input, init = {}) => {
  const request = new Request(input, init);
  const worker = WORKERS[new URL(request.url).hostname];
  return worker ? worker.fetch(request, env) : new Response("no such host", { status: 404 });
};

const form = (fields, cookie) =>
  ({ method: "POST", body: new URLSearchParams(fields), headers: cookie ? { Cookie: cookie } : {} });

test("health answers with the commit on a migrated database", { skip }, async () => {
  for (const worker of [web, auth, api]) {
    const answer = await worker.fetch(new Request("http://x/health"), env);
    assert.equal(answer.status, 200, await answer.clone().text());
    assert.equal((await answer.json()).commit, env.BRANCHLINE_COMMIT);
  }
});

test("sign up on web, buy through api, see it on the page and in the database", { skip }, async () => {
  const email = `buyer-${randomUUID()}@example.invalid`;
  const signed = await web.fetch(new Request("http://web/signup", form({ email, password: "long enough" })), env);
  assert.equal(signed.status, 303);
  const cookie = signed.headers.get("Set-Cookie").split(";")[0];

  let page = await (await web.fetch(new Request("http://web/", { headers: { Cookie: cookie } }), env)).text();
  assert.match(page, new RegExp(`Signed in as <b>${email}</b>`));
  assert.match(page, /Grid notebook/);
  assert.match(page, /none yet/);

  const products = await (await api.fetch(new Request("http://api/products"), env)).json();
  const pen = products.find((p) => p.sku === "pen");
  const bought = await web.fetch(new Request("http://web/buy", form({ product_id: pen.id }, cookie)), env);
  assert.equal(bought.status, 303);
  page = await (await web.fetch(new Request("http://web/", { headers: { Cookie: cookie } }), env)).text();
  assert.match(page, /Fountain pen \$35\.00/);

  const db = new pg.Client({ connectionString: url });
  await db.connect();
  try {
    const rows = await db.query(
      "SELECT b.amount_cents FROM purchases b JOIN users u ON u.id = b.user_id WHERE u.email = $1",
      [email],
    );
    assert.deepEqual(rows.rows, [{ amount_cents: 3500 }]);
  } finally {
    await db.end();
  }

  // Logged in again (a new session), and refused with a wrong password.
  const again = await web.fetch(new Request("http://web/login", form({ email, password: "long enough" })), env);
  assert.equal(again.status, 303);
  const wrong = await web.fetch(new Request("http://web/login", form({ email, password: "not the one" })), env);
  assert.match(await wrong.text(), /wrong email or password/);
});
