// `npm run build` → dashboard/dist: one HTML page, one script, one stylesheet, served by the admin
// listener (src/admin/dashboard.ts). Relative asset URLs keep the page working under any prefix a
// reverse proxy puts in front of the admin port.
import { defineConfig } from 'vite';

export default defineConfig({
  root: import.meta.dirname,
  base: './',
  logLevel: 'warn',
  build: {
    outDir: 'dist',
    emptyOutDir: true,
    target: 'es2022',
    // Everything stays a file of its own: the admin listener's CSP allows no inline code or data.
    assetsInlineLimit: 0,
    modulePreload: false,
    reportCompressedSize: false,
  },
});
