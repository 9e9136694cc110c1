// Counts 429s against a rate-limited route: sends RATE req/s for DURATION and reports how
// many were admitted, so a limit of N/s can be checked from outside.
// env: TARGET, RATE, DURATION, KEY
import http from 'k6/http';
import { Counter } from 'k6/metrics';

const admitted = new Counter('admitted');
const limited = new Counter('limited');
const other = new Counter('other');
const headers = __ENV.KEY ? { 'x-api-key': __ENV.KEY } : {};

export const options = {
  discardResponseBodies: true,
  scenarios: {
    flood: {
      executor: 'constant-arrival-rate',
      rate: Number(__ENV.RATE || 200),
      timeUnit: '1s',
      duration: __ENV.DURATION || '5s',
      preAllocatedVUs: 50,
      maxVUs: 200,
    },
  },
};

export default function () {
  const r = http.get(__ENV.TARGET, { headers });
  if (r.status === 429) limited.add(1);
  else if (r.status >= 200 && r.status < 300) admitted.add(1);
  else other.add(1);
}
