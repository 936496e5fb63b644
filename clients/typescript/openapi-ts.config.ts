// `make clients-typescript` writes openapi.json (what `keel openapi` serves) and runs this; the freshness test
// points OPENAPI_FILE and OUTPUT_DIR elsewhere to regenerate into a scratch directory and compare
import { defineConfig } from '@hey-api/openapi-ts';

export default defineConfig({
  input: process.env.OPENAPI_FILE ?? 'openapi.json',
  output: { path: process.env.OUTPUT_DIR ?? 'src/generated', module: { extension: '.js' } },
  plugins: ['@hey-api/client-fetch', '@hey-api/typescript', '@hey-api/sdk'],
});
