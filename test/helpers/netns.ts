// The namespace lab lives in src/lab/netns.ts (the bench uses it too); the tests import it from here.
export * from "../../src/lab/netns.ts";
