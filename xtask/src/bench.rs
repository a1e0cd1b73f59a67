//! `cargo xtask bench`: placeholder replaced below.
pub async fn run(_args: &[String]) -> anyhow::Result<()> {
    anyhow::bail!("bench is not written yet")
}
