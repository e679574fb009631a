import { defineConfig } from "vite";
import react from "@vitejs/plugin-react";

// Relative asset paths: Streamlit serves the build folder under its own component URL.
export default defineConfig({
  plugins: [react()],
  base: "./",
  build: { outDir: "../build", emptyOutDir: true, sourcemap: false },
});
