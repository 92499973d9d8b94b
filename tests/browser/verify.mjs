// The README's JavaScript verification example, run on a real delivery:
//   node verify.mjs <delivery.json>   with {secret, body_base64, headers}
// Prints the parsed payload's event_id; exits non-zero if verification fails.
import { readFileSync } from "node:fs";
import { Webhook } from "standardwebhooks";
import { createHmac, timingSafeEqual } from "node:crypto";

// --- as in the README ---------------------------------------------------
export function verify(secret, rawBody /* Buffer */, headers) {
  const payload = new Webhook(secret).verify(rawBody, headers); // throws if invalid or stale
  const expected = Buffer.from("sha256=" + createHmac("sha256", secret).update(rawBody).digest("hex"));
  const got = Buffer.from(headers["x-smartdrop-signature"] ?? "");
  if (got.length !== expected.length || !timingSafeEqual(got, expected)) throw new Error("bad signature");
  return payload;
}
// -------------------------------------------------------------------------

const delivery = JSON.parse(readFileSync(process.argv[2], "utf8"));
const body = Buffer.from(delivery.body_base64, "base64");
const payload = verify(delivery.secret, body, delivery.headers);
console.log(payload.event_id);
