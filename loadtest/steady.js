// Steady load for reload and upgrade tests: a fixed rate over keep-alive and fresh
// connections, and every failed request printed with its time, status and error.
// env: TARGET, RATE (default 200), DURATION (default 20s)
import http from 'k6/http';
import { Counter } from 'k6/metrics';

const failed = new Counter('failed_requests');

export const options = {
  summaryTrendStats: ['avg', 'p(50)', 'p(99)', 'max'],
  scenarios: {
    keepalive: {
      executor: 'constant-arrival-rate',
      rate: Number(__ENV.RATE || 200),
      timeUnit: '1s',
      duration: __ENV.DURATION || '20s',
      preAllocatedVUs: 20,
      maxVUs: 100,
    },
    fresh_connections: {
      executor: 'constant-arrival-rate',
      rate: Math.max(1, Math.floor(Number(__ENV.RATE || 200) / 4)),
      timeUnit: '1s',
      duration: __ENV.DURATION || '20s',
      preAllocatedVUs: 10,
      maxVUs: 50,
      exec: 'fresh',
    },
  },
};

function check(r) {
  if (r.status !== 200) {
    failed.add(1);
    console.error(`FAILED ${new Date().toISOString()} status=${r.status} error=${r.error || ''}`);
  }
}

export default function () {
  check(http.get(__ENV.TARGET));
}

export function fresh() {
  check(http.get(__ENV.TARGET, { headers: { Connection: 'close' } }));
}
