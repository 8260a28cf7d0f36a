// Cameras, microphone and screen capture, with the constraints each use needs.

/** Open camera and microphone; `deviceId` picks a camera (document camera). */
export async function openCameraAndMic({ deviceId = null, audio = true } = {}) {
  const video = { width: { ideal: 640 }, height: { ideal: 480 }, frameRate: { ideal: 24, max: 30 } };
  if (deviceId) video.deviceId = { exact: deviceId };
  return navigator.mediaDevices.getUserMedia({
    video,
    audio: audio ? { echoCancellation: true, noiseSuppression: true, autoGainControl: true } : false,
  });
}

/**
 * Capture a screen for reading documents and forms: full resolution, a low frame rate
 * (text needs pixels, not motion) and contentHint "detail" so the encoder keeps sharpness
 * and drops frames instead of resolution when the link is weak.
 */
export async function openScreen() {
  const stream = await navigator.mediaDevices.getDisplayMedia({
    video: { width: { max: 1920 }, height: { max: 1080 }, frameRate: { ideal: 10, max: 15 } },
    audio: false,
  });
  const track = stream.getVideoTracks()[0];
  if (track && "contentHint" in track) track.contentHint = "detail";
  return stream;
}

/** Video input devices (labels appear only once a camera permission was granted). */
export async function listCameras() {
  const devices = await navigator.mediaDevices.enumerateDevices();
  return devices.filter((d) => d.kind === "videoinput");
}

/** The next camera after the one in use, or null when there is only one. */
export async function nextCamera(currentTrack) {
  const cameras = await listCameras();
  if (cameras.length < 2) return null;
  const currentId = currentTrack && currentTrack.getSettings().deviceId;
  const index = cameras.findIndex((c) => c.deviceId === currentId);
  return cameras[(index + 1) % cameras.length];
}

/**
 * A microphone level meter: calls `onLevel(0..1)` about 10 times a second until stopped.
 * @returns {() => void} stop function
 */
export function micLevel(stream, onLevel) {
  const track = stream.getAudioTracks()[0];
  if (!track) return () => {};
  const ctx = new AudioContext();
  const source = ctx.createMediaStreamSource(new MediaStream([track]));
  const analyser = ctx.createAnalyser();
  analyser.fftSize = 512;
  source.connect(analyser);
  const data = new Uint8Array(analyser.fftSize);
  const timer = setInterval(() => {
    analyser.getByteTimeDomainData(data);
    let peak = 0;
    for (const v of data) peak = Math.max(peak, Math.abs(v - 128) / 128);
    onLevel(Math.min(1, peak * 2));
  }, 100);
  return () => {
    clearInterval(timer);
    ctx.close().catch(() => {});
  };
}
