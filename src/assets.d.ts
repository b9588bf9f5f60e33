// Build artifacts imported with `with { type: "file" }` resolve to a path
// (under /$bunfs in the compiled binary).
declare module "*.so" {
  const path: string;
  export default path;
}
declare module "*.o" {
  const path: string;
  export default path;
}
