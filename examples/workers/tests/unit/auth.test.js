// auth without a database: what it checks before it needs one.
import assert from "node:assert/strict";
import { test } from "node:test";
import worker, { hashPassword, passwordMatches, tokenHash } from "../../services/auth/src/index.js";

const NOWHERE = { DATABASE_URL: "postgresql://nobody@127.0.0.1:1/none", BRANCHLINE_COMMIT: "abc1234" };
const post = (path, body) =>
  new Request(`http://auth${path}`, { method: "POST", body: JSON.stringify(body) });

test("a password is stored salted and checked", async () => {
  const stored = await hashPassword("correct horse");
  assert.match(stored, /^pbkdf2\$\d+\$[0-9a-f]{32}\$[0-9a-f]{64}$/);
  assert.notEqual(stored, await hashPassword("correct horse"));
  assert.ok(await passwordMatches("correct horse", stored));
  assert.ok(!(await passwordMatches("wrong horse", stored)));
});

test("session tokens are stored as their HMAC with AUTH_SECRET", async () => {
  assert.equal((await tokenHash("t", "one")).length, 64);
  assert.notEqual(await tokenHash("t", "one"), await tokenHash("t", "two"));
});

test("a sign-up without an email or with a short password is refused", async () => {
  let answer = await worker.fetch(post("/signup", { email: "nope", password: "long enough" }), NOWHERE);
  assert.equal(answer.status, 400);
  answer = await worker.fetch(post("/signup", { email: "a@b.c", password: "short" }), NOWHERE);
  assert.equal(answer.status, 400);
  answer = await worker.fetch(new Request("http://auth/me"), NOWHERE);
  assert.equal(answer.status, 401);
});

test("health reports the commit, and 503 without the database", async () => {
  const answer = await worker.fetch(new Request("http://auth/health"), NOWHERE);
  assert.equal(answer.status, 503);
  const body = await answer.json();
  assert.equal(body.commit, "abc1234");
  assert.equal(body.service, "auth");
  assert.equal(body.status, "error");
});
