// Open-loop latency at a fixed arrival rate: the p99/p99.9 columns of scripts/bench.
// env: TARGET (http://127.0.0.1:PORT/path), RATE (req/s), DURATION (e.g. 10s), KEY, TOKEN
import http from 'k6/http';

const headers = {};
if (__ENV.KEY) headers['x-api-key'] = __ENV.KEY;
if (__ENV.TOKEN) headers['Authorization'] = `Bearer ${__ENV.TOKEN}`;

export const options = {
  discardResponseBodies: true,
  summaryTrendStats: ['avg', 'p(50)', 'p(99)', 'p(99.9)', 'max'],
  scenarios: {
    fixed: {
      executor: 'constant-arrival-rate',
      rate: Number(__ENV.RATE || 1000),
      timeUnit: '1s',
      duration: __ENV.DURATION || '10s',
      preAllocatedVUs: Number(__ENV.VUS || 100),
      maxVUs: Number(__ENV.MAX_VUS || 400),
    },
  },
};

export default function () {
  http.get(__ENV.TARGET, { headers });
}
