// Sources the bench embeds as text (`with { type: "text" }`), so a compiled
// binary can write them out and run them: the Gloo rank script and the MPI rank program.
declare module "*.py" {
  const text: string;
  export default text;
}
declare module "*.c" {
  const text: string;
  export default text;
}
