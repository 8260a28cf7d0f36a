// The outlet's pre-call check: camera and microphone preview with a level meter, screen-share
// permission, and a network check with plain advice.

import { $, show } from "./dom.js";
import { micLevel, openCameraAndMic, openScreen } from "./devices.js";
import { measureNetwork } from "./netcheck.js";

const ADVICE = { good: "check_net_good", fair: "check_net_fair", poor: "check_net_poor", fail: "check_net_fail" };

export class PreCallCheck {
  /**
   * @param {object} o
   * @param {(key: string, values?: object) => string} o.t translator
   * @param {(stream: MediaStream) => void} o.onMedia receives the camera+microphone stream once open
   */
  constructor({ t, onMedia }) {
    this.t = t;
    this.onMedia = onMedia;
    this.media = null;
    this.stopMeter = null;
    $("#check-camera-retry").addEventListener("click", () => this.camera());
    $("#check-screen-run").addEventListener("click", () => this.screen());
    $("#check-network-retry").addEventListener("click", () => this.network());
  }

  #result(id, result, text) {
    const item = $(id);
    item.dataset.result = result;
    item.querySelector(".check-text").textContent = text;
  }

  async camera() {
    show($("#check-camera-retry"), false);
    try {
      if (!this.media) {
        this.media = await openCameraAndMic();
        this.onMedia(this.media);
      }
      $("#check-video").srcObject = this.media;
      this.stop();
      this.stopMeter = micLevel(this.media, (level) => { $("#mic-level").value = level; });
      this.#result("#check-camera", "ok", this.t("check_camera_ok"));
    } catch (err) {
      this.#result("#check-camera", "fail", `${this.t("check_camera_fail")} (${err.name})`);
      show($("#check-camera-retry"), true);
    }
  }

  async screen() {
    try {
      const stream = await openScreen();
      stream.getTracks().forEach((track) => track.stop());
      this.#result("#check-screen", "ok", this.t("check_screen_ok"));
    } catch (err) {
      this.#result("#check-screen", "fail", `${this.t("check_screen_fail")} (${err.name})`);
    }
  }

  async network() {
    show($("#check-network-retry"), false);
    this.#result("#check-network", "pending", this.t("check_net_running"));
    const result = await measureNetwork();
    const figures = result.rtt === null ? ""
      : " — " + this.t("net_result", { rtt: result.rtt, loss: Math.round(result.loss * 100) });
    const kind = result.verdict === "fail" ? "fail" : result.verdict === "good" ? "ok" : "warn";
    this.#result("#check-network", kind, this.t(ADVICE[result.verdict]) + figures);
    if (result.verdict !== "good") show($("#check-network-retry"), true);
  }

  /** Stop the level meter (leaving the check step). */
  stop() {
    if (this.stopMeter) this.stopMeter();
    this.stopMeter = null;
  }
}
