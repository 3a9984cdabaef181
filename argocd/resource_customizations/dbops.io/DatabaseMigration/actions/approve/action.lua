-- Approves a DatabaseMigration held in AwaitingApproval by setting the annotation the operator waits for,
-- the same change as: kubectl annotate dbmig NAME dbops.io/approved=true
-- Argo CD may run an action even when discovery disabled it (CLI, API), so refuse anything that is not
-- waiting for approval: an approval must be a decision about this run, not a leftover for a later one.
local phase = nil
if obj.status ~= nil then
  phase = obj.status.phase
end
if phase ~= "AwaitingApproval" then
  error("DatabaseMigration " .. obj.metadata.name .. " is not awaiting approval (phase " ..
    tostring(phase) .. ")", 0)
end

if obj.metadata.annotations == nil then
  obj.metadata.annotations = {}
end
obj.metadata.annotations["dbops.io/approved"] = "true"
return obj
