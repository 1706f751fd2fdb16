export { Fanline, FanlineError, Subscription } from "./client.js";
